/*
 * engine_fpga.h - the FPGA engine: work units (engine.h) on the Quiver
 * FPGA card (docs/REGISTERS.md, quiver/fpga_regs.h), real or simulated
 * by firmware-sim (a thread of this process, or a qv-fpga-sim process).
 *
 * The design (rings, regions, resident lists, the fault state machine)
 * is described at the top of host/engine/fpga.c.  What a caller needs:
 *
 *   - Supported units: QV_WU_FLAT, QV_WU_F16, QV_WU_SQ8 and QV_WU_PQ
 *     (nbits 4 and 8), metrics L2 and IP, k (the heaps' k) 1..the card's
 *     MAX_K (256), dim 1..the card's MAX_DIM (4096), the kinds the card
 *     advertises in CAPS_SCAN.  Anything else is refused by submit with
 *     QV_ENOTSUP and a message, so the router can use the CPU.  A unit
 *     of more than MAX_NQ queries is split into several SCAN descriptors
 *     and still completes as one unit.
 *   - Results equal the CPU engine's: identical ids except near-ties,
 *     distances within float rounding (PQ 4-bit is bit-identical: the
 *     host builds the byte tables with the CPU kernels).
 *   - Lists (codes, norms) and PQ index tables (codebooks, coarse
 *     centroids, list tables) are uploaded once into card memory and kept
 *     resident, keyed by (host pointer, bytes), least-recently-used
 *     evicted when hbm_budget would be exceeded or the card says it is
 *     full.  The memory of a list must not change while the card may hold
 *     a copy: call qv_engine_forget() (engine.h) when a list is freed or
 *     rewritten.  A unit whose lists do not fit in the budget together
 *     completes with QV_ENOMEM (the router gives it to the CPU).
 *   - Prefetch (qv_engine_prefetch, engine.h): UPLOADs of the lists not
 *     yet resident, doorbelled without waiting; their completions are
 *     collected by poll() (and submit()) like any other.  A unit that
 *     needs a list whose UPLOAD is still in flight waits for that
 *     completion in submit() (the cold path) instead of uploading again.
 *     Declines (QV_EBUSY) rather than take the last quarter of the ring
 *     or the dynamic regions units need, and (QV_ENOSPC) what the budget
 *     cannot take without evicting blocks in use.  Details in
 *     fpga_int.h.
 *   - submit() of a unit whose lists are all resident writes the SCAN
 *     descriptor, rings the doorbell and returns: no allocation, no lock,
 *     no system call once the per-slot buffers have grown to the unit's
 *     size.  A unit that needs uploads waits in submit() for them (the
 *     cold path).  Up to QV_FPGA_SLOTS units are in flight (QV_EBUSY
 *     beyond).  poll() collects completions, merges the candidates into
 *     wu->heaps (O(nq * k) per unit) and sets device_ns (the card's
 *     modelled time of the unit's descriptors) and transfer_ns (the
 *     bytes the unit moved over PCIe at the card's PCIE_MBPS).  poll() of
 *     a simulated card, which runs on this machine's cores, sleeps 20 us
 *     when nothing completed for 50 us; poll() of a real card never
 *     sleeps.  An allocation failure while a unit is built completes the
 *     unit with QV_ENOMEM (heaps untouched, the engine stays healthy).
 *   - Faults (a missed deadline, a frozen heartbeat, STATUS FATAL or
 *     LINK_DOWN, a completion with ECC_ERROR, RESET or INTERNAL): every
 *     unit not yet completed comes back from poll() with status QV_EIO
 *     and its heaps untouched; the engine reports QV_EUNAVAIL while it
 *     resets the card and sets its rings up again (poll() and submit()
 *     drive that; neither blocks for it), then 0.  A card that does not
 *     come back keeps the engine at QV_EUNAVAIL; it is probed again at
 *     most every watchdog_ms.  An error completion of a unit (BAD_*: a
 *     driver bug) fails that unit with QV_EIO and a message naming the
 *     status; the engine stays healthy.
 *
 * Thread-safety: one thread at a time per engine (submit, poll, forget,
 * prefetch, and the functions below).
 */
#ifndef QUIVER_ENGINE_FPGA_H
#define QUIVER_ENGINE_FPGA_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/engine.h"

struct qv_config;

#define QV_FPGA_SLOTS 8u            /* units in flight per engine */

struct qv_fpga_opts {
    volatile void *bar0;            /* thread mode: the card's BAR0
                                       (qv_fpga_sim_bar0), borrowed, must
                                       outlive the engine; NULL = map the
                                       shm object of `name` (a qv-fpga-sim
                                       process or a real card's driver) */
    const char *name;               /* card name; NULL or "" = "0" */
    unsigned qp;                    /* queue pair, < the card's NUM_QPS */
    uint32_t ring_entries;          /* SQ and CQ entries: a power of two
                                       in 16..4096; default 256 */
    uint32_t timeout_ms;            /* a unit that makes no progress this
                                       long is a fault; default 2000 */
    uint32_t watchdog_ms;           /* HEARTBEAT must change within this
                                       while units are in flight; default
                                       250 */
    uint32_t reset_timeout_ms;      /* a reset must complete within this;
                                       default 1000 */
    uint64_t hbm_budget;            /* card memory for resident blocks; 0
                                       = the card's HBM_BYTES */
};

/* Defaults (above): bar0 NULL, card "0", QP 0.  Cannot fail. */
void qv_fpga_opts_default(struct qv_fpga_opts *o);

/* Fill o from the [fpga] section of cfg (keys name, ring_entries,
 * timeout_ms, watchdog_ms, reset_timeout_ms, hbm_budget; see
 * conf/quiver.conf).  name points into cfg, which must outlive o.
 * bar0 is NULL.  Returns 0 (values were validated when cfg was loaded). */
int qv_fpga_opts_from_config(const struct qv_config *cfg, struct qv_fpga_opts *o);

/*
 * qv_engine_fpga_create - connect to a card: map BAR0 (o->bar0, else the
 * shm object /quiver-fpga-<name>), wait for MAGIC (up to
 * reset_timeout_ms), check VERSION, reset the card, set up the queue
 * pair's rings in host memory and the region table, and enable it.  In
 * process mode it also writes SIM_HOST_PID and allows the card process
 * to read and write this process's memory (prctl PR_SET_PTRACER).
 * Returns the engine, or NULL with qv_errno:
 *   QV_EUNAVAIL  no card of that name ("start qv-fpga-sim --name X"),
 *                no MAGIC, another major VERSION, a reset or QP enable
 *                that did not complete or was refused
 *   QV_EINVAL    bad options (ring_entries, qp, zero timeouts)
 *   QV_ENOMEM
 * Blocks up to about 3 x reset_timeout_ms.  The card is owned by one
 * engine at a time: a second engine on the same card resets it.
 */
struct qv_engine *qv_engine_fpga_create(const struct qv_fpga_opts *o);

struct qv_fpga_stats {
    uint64_t units;                 /* units completed with status 0 */
    uint64_t uploads;               /* UPLOAD descriptors completed OK */
    uint64_t evictions;             /* resident blocks FREEd for room */
    uint64_t faults;                /* fault events (each led to a reset) */
    uint64_t resets;                /* resets that completed (recoveries) */
    uint64_t timeouts;              /* faults: a unit past its deadline */
    uint64_t ecc_errors;            /* faults: ECC_ERROR completions */
    uint64_t watchdog_trips;        /* faults: HEARTBEAT frozen */
    uint64_t units_handed_back;     /* units failed with QV_EIO by a fault */
    uint64_t error_completions;     /* BAD_* / NO_MEMORY completions */
    uint64_t submit_ns_total;       /* host time spent inside submit() */
    uint64_t prefetch_calls;        /* qv_engine_prefetch calls */
    uint64_t prefetch_uploads;      /* prefetch UPLOADs completed OK (also
                                       counted in uploads) */
    uint64_t prefetch_bytes;        /* bytes of the prefetch UPLOADs sent */
    uint64_t prefetch_waits;        /* blocks a unit found still being
                                       uploaded by a prefetch (it waited) */
    uint64_t prefetch_declined;     /* prefetches that declined a list */
};

/* Copy the engine's counters (since create) into *out.  QV_EINVAL when e
 * is not an FPGA engine; cannot fail otherwise. */
int qv_engine_fpga_stats(const struct qv_engine *e, struct qv_fpga_stats *out);

/* Drop (FREE) the card's copy of the memory at host (a list's codes or
 * norms, a PQ table).  Units in flight that use it are not disturbed
 * (ring order: the FREE runs after them).  A prefetch UPLOAD of it still
 * in flight is waited for first (it reads host).  Returns 1 when a copy
 * was held, else 0.  Called through qv_engine_forget() (engine.h). */
int qv_engine_fpga_forget(struct qv_engine *e, const void *host);

/* Block until no unit is in flight (they then wait in poll()) and no
 * prefetch UPLOAD is outstanding, driving faults and recovery like
 * poll().  For benchmarks, tests and shutdown: the router polls.
 * Returns 0, or QV_EUNAVAIL when the engine is unhealthy afterwards. */
int qv_engine_fpga_wait(struct qv_engine *e);

/* One NOP descriptor round trip: *ns = host time from before the doorbell
 * to the completion seen (the host-side cost of a submission plus the
 * card's launch).  Returns 0, QV_EUNAVAIL (unhealthy, or a fault struck
 * while waiting), QV_EBUSY (the ring is full). */
int qv_engine_fpga_nop(struct qv_engine *e, uint64_t *ns);

#endif
