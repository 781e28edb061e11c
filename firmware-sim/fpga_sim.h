/*
 * fpga_sim.h - the simulated Quiver FPGA card (firmware-sim/).
 *
 * The simulator is the card side of docs/REGISTERS.md (quiver/fpga_regs.h):
 * a BAR0 register window, queue-pair rings in host memory reached by DMA
 * through the ATU table, HBM blocks, SCAN executed on a Quiver engine (the
 * "bitstream": the OpenCL engine on POCL, or the CPU engine), a modelled
 * device time per completion, an error log and injectable faults.  The
 * design is described at the top of firmware-sim/card_int.h.
 *
 * Two modes (enum qv_fpga_sim_mode, fpga_regs.h):
 *   QV_FPGA_SIM_THREAD   BAR0 is qv_malloc'd memory (64-byte aligned,
 *                        zeroed) and the card runs in its own pthread,
 *                        started by create; DMA is memcpy after the ATU
 *                        check.  For unit tests: the host is this process.
 *   QV_FPGA_SIM_PROCESS  BAR0 is the POSIX shm object QV_FPGA_SHM_PREFIX +
 *                        name (/dev/shm/quiver-fpga-<name>) that create makes
 *                        and maps; the card runs in the caller's thread in
 *                        qv_fpga_sim_run(); DMA is process_vm_readv/writev
 *                        on the pid the host writes to SIM_HOST_PID.  Used
 *                        by the qv-fpga-sim executable.
 *
 * Thread-safety: create, run, free, inject and kill are called by the one
 * thread that owns the card object.  The card itself is driven only
 * through BAR0 (any thread or process may access it with atomic loads and
 * stores, per the contract).
 */
#ifndef QUIVER_FPGA_SIM_H
#define QUIVER_FPGA_SIM_H

#include <stdint.h>

#include "quiver/fpga_regs.h"

struct qv_config;

/* Limits the simulated card reports (MAX_DIM, MAX_NQ registers). */
#define QV_FPGA_SIM_MAX_DIM     4096u
#define QV_FPGA_SIM_MAX_NQ      4096u

struct qv_fpga_sim_opts {
    const char *name;           /* card name: shm object QV_FPGA_SHM_PREFIX + name
                                   (process mode); [A-Za-z0-9._-], 1..64 chars */
    uint64_t hbm_bytes;         /* device memory; default 16 GiB (accounting only:
                                   blocks are malloc'd on upload, so the sim uses
                                   only what is uploaded) */
    uint32_t clock_mhz, lanes, hbm_mbps, pcie_mbps, launch_ns, qtile; /* timing
                                   model; defaults = Alveo U55C (docs/REGISTERS.md):
                                   300, 2048, 460000, 12000, 5000, 256 */
    uint32_t tick_us;           /* loop tick / heartbeat period when idle, 1..1000
                                   (default 1000 us; heartbeat += 1 per tick and per
                                   descriptor; each idle tick is a wakeup
                                   taken from the host's cores, so 200 us
                                   cost the CPU engine ~4% beside it) */
    uint32_t throttle_factor;   /* >= 1, default 4 (THROTTLE_FACTOR at start) */
    int use_opencl;             /* 1 (default): the "bitstream" is the OpenCL engine
                                   (POCL); falls back to the CPU engine with a
                                   warning when there is no OpenCL (or a build
                                   without QV_HAVE_OPENCL); 0: CPU engine */
    int pace;                   /* 1: complete no earlier than the modelled device
                                   time (SIM_PACE at start) */
};

/* Defaults as listed above (name "0").  Cannot fail. */
void qv_fpga_sim_opts_default(struct qv_fpga_sim_opts *o);

/*
 * Fill o from the [fpga] section of cfg: keys name, hbm_bytes (size),
 * clock_mhz, lanes, hbm_mbps, pcie_mbps, launch_ns, sim_opencl (bool),
 * sim_pace (bool).  Keys the schema (host/common/config.c) does not
 * declare leave o's field as it was, so call qv_fpga_sim_opts_default
 * first.  name points into cfg, which must outlive o.  Returns 0 (values
 * were validated when cfg was loaded; create validates the rest).
 */
int qv_fpga_sim_opts_from_config(const struct qv_config *cfg, struct qv_fpga_sim_opts *o);

struct qv_fpga_sim;

/*
 * qv_fpga_sim_create - make a card per o (NULL = defaults) in mode.
 * Fills BAR0 (identity, capabilities, timing mirrors, STATUS = READY |
 * HALTED, MAGIC last), creates the card's engine (OpenCL when o->use_opencl
 * and available, else CPU; a warning names why) and its kernel thread, and
 * in thread mode starts the card thread.
 *   THREAD   BAR0 is qv_malloc'd (64-byte aligned, zeroed).
 *   PROCESS  BAR0 is shm_open(QV_FPGA_SHM_PREFIX name, O_CREAT | O_EXCL after
 *            unlinking a stale one), ftruncate to 64 KiB, mmap; the card runs
 *            when the caller calls qv_fpga_sim_run().  SIM_CARD_PID = getpid().
 * Returns the card, owned by the caller (qv_fpga_sim_free), or NULL with
 * qv_errno:
 *   QV_EINVAL  a bad option (the message names the field) or mode
 *   QV_EIO     shm_open / ftruncate / mmap failed (the message names the path)
 *   QV_ENOMEM
 *   or the error of pthread_create (negated errno).
 */
struct qv_fpga_sim *qv_fpga_sim_create(const struct qv_fpga_sim_opts *o,
                                       enum qv_fpga_sim_mode mode);

/* The card's BAR0 (QV_FPGA_BAR0_SIZE bytes), valid until qv_fpga_sim_free.
 * Access registers with 32/64-bit atomic loads and stores. */
volatile void *qv_fpga_sim_bar0(struct qv_fpga_sim *s);

/*
 * Process mode: run the card loop in the calling thread until *stop becomes
 * nonzero (e.g. set by a signal handler) -> 0.  QV_EINVAL for a thread-mode
 * card (its loop already runs in its own thread).  Call at most once.
 */
int qv_fpga_sim_run(struct qv_fpga_sim *s, volatile int *stop);

/* Stop the card thread (thread mode; waits for it, and for a scan in
 * flight), unmap and unlink the shm (process mode; the caller must have
 * left qv_fpga_sim_run), free everything incl. HBM blocks and the engine.
 * NULL ok. */
void qv_fpga_sim_free(struct qv_fpga_sim *s);

/* Test API, same effect as writing f to BAR0 FAULT_INJECT: the card
 * applies it at its next tick (poll FAULT_INJECT for 0 to know it has).
 * Returns 0, or QV_EINVAL when f is not a QV_FPGA_FAULT_* code 1..6. */
int qv_fpga_sim_inject(struct qv_fpga_sim *s, enum qv_fpga_fault f);

/* Thread-mode test API: make the card thread exit as if its process died
 * (HEARTBEAT stops, nothing more is completed; a scan in flight finishes
 * on the engine but is never completed).  Returns once the thread has
 * exited.  qv_fpga_sim_free still cleans up.  No effect in process mode. */
void qv_fpga_sim_kill(struct qv_fpga_sim *s);

#endif
