/*
 * card_int.h - private structure of the simulated FPGA card (card.c,
 * card_dma.c, card_scan.c).  The contract it implements is docs/REGISTERS.md
 * and quiver/fpga_regs.h; this comment says how the simulator honours it
 * and why.
 *
 * THREADS
 *
 *   loop thread    The firmware loop (card_loop): registers, faults, reset,
 *                  queue pairs, descriptors.  Thread mode: a pthread made
 *                  by create; process mode: the caller of qv_fpga_sim_run.
 *                  It alone touches the card's state, so that state has no
 *                  locks.
 *   kernel thread  Runs a SCAN's work unit on the engine, one at a time.
 *                  The loop hands it the unit and, while it runs, keeps
 *                  ticking: HEARTBEAT, CLOCK_NS, FAULT_INJECT and CTRL.RESET
 *                  stay alive during a scan of any length, as on a card
 *                  whose management processor is not the kernel.  A host
 *                  watchdog (100 ms without a heartbeat) therefore never
 *                  mistakes a long scan for a hang.
 *
 * THE LOOP (one iteration)
 *
 *   1. CLOCK_NS = CLOCK_MONOTONIC.  Every tick_us: HEARTBEAT += 1 (not while
 *      HANG), temperature, STATUS.  HEARTBEAT also += 1 per descriptor.
 *   2. FAULT_INJECT != 0: apply the fault, FAULTS += 1 (not for CLEAR), log
 *      the event, write 0 back.  CTRL.RESET: reset (below).  These two are
 *      all a hung card still watches.
 *   3. HANG or LINK_DOWN: sleep a tick; nothing else moves.
 *   4. Queue-pair configuration: QP_CTRL.ENABLE newly set -> validate the
 *      rings (power-of-two entries 16..4096, 64-aligned bases, SQ in a READ
 *      region, CQ in a WRITE region) -> zero the indices and set RUNNING, or
 *      latch CONFIG_ERROR | code << 16 and log EV_QP_CONFIG.  ENABLE cleared
 *      -> clear RUNNING / CONFIG_ERROR (between descriptors, so the one in
 *      flight has completed).
 *   5. CTRL.ENABLE: serve the QPs round-robin, one descriptor per turn: a
 *      doorbell overrun (SQ_TAIL - SQ_HEAD > SQ_ENTRIES) stops the QP
 *      (CONFIG_ERROR BAD_PARAM, EV_DOORBELL); a full CQ (CQ_TAIL - CQ_HEAD ==
 *      CQ_ENTRIES) sets CQ_FULL and skips the QP; otherwise fetch the
 *      descriptor at SQ_BASE + (SQ_HEAD & (SQ_ENTRIES - 1)) * 64 by DMA,
 *      execute it, DMA the completion (bytes 0x00..0x1B, then seq with a
 *      release store / its own 4-byte process_vm_writev), then advance
 *      CQ_TAIL and SQ_HEAD (release).
 *   6. Idle: busy-poll for QV_CARD_SPIN_NS after the last descriptor (so a
 *      round trip costs microseconds, not a tick), then sleep tick_us per
 *      iteration (an idle card costs almost no CPU: at the default 1 ms,
 *      1000 wakeups/s; at 200 us the 5000 wakeups/s of a thread-mode card
 *      took ~4% from the CPU engine's scans beside it on 2 vCPUs).
 *
 * DMA AND THE ATU (card_dma.c)
 *
 *   Every access to host memory goes through card_dma_check(): the range
 *   [addr, addr + len) must lie inside one VALID ATU entry with the needed
 *   flag, tested as addr >= base && len <= elen && addr - base <= elen -
 *   len, which cannot overflow; the address must be aligned as the field
 *   requires.  The table is read from BAR0 on every check (flags with an
 *   acquire load, after which base and len are stable), so the host needs
 *   no invalidation handshake.  A zero-length range needs no region.  The
 *   first failing address becomes the completion's BAD_ADDRESS and the
 *   error log's detail.  Thread mode then memcpy's; process mode calls
 *   process_vm_readv / writev on SIM_HOST_PID (0 -> BAD_ADDRESS) and loops
 *   over partial transfers; a failed call (the host died, a region that is
 *   not really mapped) is a BAD_ADDRESS completion and a log entry, never
 *   a crash.  (Thread mode trusts the ATU: a region the host registered
 *   over unmapped memory would fault in memcpy, as a real IOMMU mapping of
 *   freed pages would corrupt.)  Every byte moved is counted in
 *   DMA_READ_BYTES / DMA_WRITE_BYTES and in the descriptor's pcie_bytes, so
 *   the PCIe term of the timing model is exact by construction.  The
 *   completion's own 32 bytes are added before device_ns is computed.
 *
 * VALIDATION
 *
 *   A descriptor's content is untrusted.  Checks run in the order of the
 *   contract (opcode; descriptor fields; table and result addresses, then
 *   lengths; table fields; array addresses; array contents; handles, then
 *   block lengths) and the first failure decides the status; the card
 *   writes nothing to the host but the completion, allocates and frees
 *   nothing, logs the failure with its detail and goes on serving.  Sizes
 *   are computed in 64 bits from 32-bit fields (they cannot overflow: at
 *   most 2^32 x 4096 bytes); block sizes are compared against the minimum
 *   a list of n entries needs before any kernel reads them, so no kernel
 *   can read past a block.  Reserved descriptor and table fields must be 0.
 *   pq_* fields of non-PQ units and qnorms of units that do not need them
 *   are ignored, as "unneeded fields" are; PROBE_TABLES on a non-PQ unit
 *   is BAD_PARAM.  Every list entry of the table is validated, probed or
 *   not, and list_no < pq_ncoarse holds for every PQ list (the table
 *   field's rule), even where nothing reads it (PQ4 with PROBE_TABLES).
 *   The results range checked is [results, results + results_len).
 *   Failures that are not the descriptor's content:
 *     - the descriptor fetch fails (SQ region gone; process mode: the host
 *       died): a BAD_ADDRESS completion with opcode 0 and seq = SQ index +
 *       1, so the host's poll still matches;
 *     - the completion cannot be written: logged, and the QP is stopped
 *       with CONFIG_ERROR | BAD_ADDRESS (nothing more can complete on it);
 *     - card scratch cannot grow, or the engine fails a unit: INTERNAL.
 *   Ring geometry (bases, entries) is latched at QP enable, so a host that
 *   rewrites it while the QP runs cannot move the rings under the card.
 *
 * HBM (card.c)
 *
 *   A block is qv_malloc'd (64-byte aligned, QV_MEM_IO) at UPLOAD and
 *   counted in HBM_USED rounded up to 64 bytes; an UPLOAD that would take
 *   HBM_USED over hbm_bytes fails with NO_MEMORY (detail = bytes asked).
 *   The card never evicts: a handle stays valid until FREE or reset, and
 *   the host driver makes room by FREEing its least recently used handles
 *   and retrying.  Handles come from a 32-bit counter that skips 0, NONE and
 *   any handle still resident, so a freed handle is not reused until the
 *   counter wraps; they live in an open-addressing hash table (linear
 *   probing, backward-shift deletion, load <= 1/2): O(1) lookup.  Reset
 *   frees every block but keeps the counter running, so a handle from
 *   before the reset is BAD_HANDLE afterwards.  Per block the card keeps,
 *   outside the HBM budget, the result ids of its entries ((handle << 32) |
 *   entry, grown on the first scan that needs them): the engine's heaps
 *   order by (distance, id), which is then exactly the contract's (dist,
 *   handle, entry).  The engine is told to forget a block's memory
 *   (qv_engine_forget) when it is freed, so a resident copy keyed by
 *   pointer never outlives it.
 *
 * SCAN (card_scan.c)
 *
 *   The table and its arrays are DMA'd into card-private scratch buffers
 *   that only grow.  The work unit's lists point at HBM blocks.  Filter:
 *   each probed list gets a base row, a multiple of 64, so list l's rows[]
 *   is a window of one identity array (rows[e] = base_l + e) and its mask
 *   words copy into the unit's row bitmap whole (NONE -> all ones); lists
 *   that no query probes get no rows and no ids.  SQ8: vmin / vdiff from
 *   the table.  PQ: a struct qv_pq borrowing the codebooks block, coarse and
 *   ltab blocks, qtab from the table.  The unit runs on the card's engine;
 *   a unit the OpenCL engine refuses with QV_ENOTSUP (local memory, k) runs
 *   on the CPU engine, and an OpenCL engine that turns unhealthy is
 *   replaced by the CPU engine for good (a warning says so).  PQ units the
 *   engines cannot express - PROBE_TABLES (host-made per-probe tables and
 *   biases), or L2 without ltab and without qtab - run on the card's own
 *   per-probe scanner (card_scan.c: the CPU kernels' lut_f32,
 *   lut_quantize4, scan8, scan4), which follows the contract's table of
 *   t and b.  Heaps are sorted and written as nq x k results in one DMA.
 *
 * TIMING MODEL
 *
 *   As docs/REGISTERS.md: device_ns = f x (LAUNCH_NS + max(hbm_ns,
 *   compute_ns) + pcie_ns) for SCAN, f x (LAUNCH_NS + pcie_ns) for UPLOAD,
 *   f x LAUNCH_NS for NOP and FREE, in double precision and floored once
 *   at the end; f = THROTTLE_FACTOR while THROTTLE is active, else 1.  A
 *   descriptor that fails validation reports 0.  With SIM_PACE the
 *   completion is held until start + device_ns (ticking meanwhile).
 *
 * FAULTS
 *
 *   HANG       the loop only watches FAULT_INJECT and CTRL.RESET: HEARTBEAT
 *              freezes, rings stop, STATUS is left as it was.  A scan in
 *              flight finishes on the engine but is completed only after
 *              CLEAR (normally) or RESET (with status RESET).
 *   ECC        pending until the next completion of any QP, which gets
 *              ECC_ERROR whatever it would have been (UPLOAD keeps no
 *              block, SCAN writes no results, FREE still frees);
 *              ECC_UNCORRECTED += 1 then.  EV_ECC_UNCORRECTED is logged
 *              when the fault is applied, the ECC_ERROR status entry when
 *              it is consumed.  The completion keeps the device_ns of the
 *              work done.
 *   ECC_CORRECTED  ECC_CORRECTED += 1.
 *   LINK_DOWN  rings stop, STATUS.LINK_DOWN, heartbeat continues.
 *   THROTTLE   device time x THROTTLE_FACTOR, STATUS.THROTTLED, TEMP_MC
 *              95000 (otherwise 45000 idle, rising towards 80000 with the
 *              busy share of recent ticks).
 *   CLEAR      ends HANG (logs EV_HANG with its length), LINK_DOWN (EV_LINK_
 *              UP), THROTTLE (EV_THROTTLE_OFF), drops a pending ECC.
 *   FAULTS counts every applied injection except CLEAR (ECC_CORRECTED
 *   included).  The error log is the contract's ring of 32 entries: entry
 *   first, then ERRLOG_WIDX with a release store.
 *
 * RESET
 *
 *   Seen at the next check of CTRL.RESET, also while hung or with the link
 *   down: reset is what recovers the card.  A scan in flight is waited for
 *   (the engine cannot be interrupted), then completed with status RESET;
 *   then QP blocks and the ATU are zeroed, blocks freed, faults cleared,
 *   CTRL.ENABLE cleared, EV_RESET logged with the number aborted, CTRL
 *   cleared and STATUS = READY | HALTED.  Counters and HEARTBEAT carry on.
 */
#ifndef QV_CARD_INT_H
#define QV_CARD_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "fpga_sim.h"
#include "quiver/engine.h"
#include "quiver/pq.h"
#include "quiver/topk.h"

#define QV_CARD_SPIN_NS     1000000     /* busy-poll this long after work */
#define QV_CARD_TEMP_IDLE   45000
#define QV_CARD_TEMP_BUSY   80000
#define QV_CARD_TEMP_THROT  95000

/* One HBM block. */
struct card_block {
    uint32_t handle;
    uint64_t len;               /* bytes uploaded */
    uint64_t charged;           /* len rounded up to 64: HBM_USED share */
    void *data;                 /* qv_malloc'd, 64-byte aligned */
    uint64_t *ids;              /* (handle << 32) | e for e < ids_n, or NULL */
    uint32_t ids_n;
};

/* A grow-only scratch buffer (card-private, 64-byte aligned). */
struct card_buf {
    void *p;
    size_t cap;
};

/* Card-side state of one queue pair.  The ring geometry is latched when
 * the QP is enabled (the contract lets the host write it only while the QP
 * is disabled), so a later write cannot move the rings under the card. */
struct card_qp {
    int running;                /* RUNNING as the card last set it */
    int latched;                /* CONFIG_ERROR latched until ENABLE clears */
    uint64_t sq_base, cq_base;
    uint32_t sq_entries, cq_entries;
};

/* What executing one descriptor produced. */
struct card_result {
    uint16_t status;            /* enum qv_fpga_status */
    uint32_t result;            /* completion.result */
    uint64_t detail;            /* error-log detail on failure */
    double device_ns;           /* before the throttle factor */
};

/* Accounting of the descriptor in execution. */
struct card_desc_ctx {
    uint8_t qp;
    uint8_t opcode;
    uint32_t seq;
    uint32_t sq_index;
    uint64_t pcie_bytes;        /* DMA bytes moved for this descriptor */
    uint64_t bad_addr;          /* first failing address of a DMA check */
};

/* The work unit a SCAN builds (card_scan.c), with its scratch. */
struct card_scan {
    struct card_buf table_b;    /* struct qv_fpga_scan_table */
    struct card_buf queries, qnorms, poff, plist, lists, mask_off, mask_words;
    struct card_buf vmin, vdiff, qtab, pparams, plut8;
    struct card_buf wulists;    /* nlists struct qv_wu_list */
    struct card_buf blocks;     /* nlists x 2 struct card_block * (codes, norms) */
    struct card_buf probes;     /* nlists u32: probes per list */
    struct card_buf rows;       /* identity u32 array */
    size_t rows_filled;
    struct card_buf filter;     /* u64 row bitmap */
    struct card_buf heaps, hdist, hids;
    struct card_buf results;    /* nq x k struct qv_fpga_result */
    struct card_buf pq_lut, pq_resid, pq_lut8;  /* own PQ scanner */
    struct qv_work_unit wu;
    struct qv_sq8_params sq8;
    struct qv_pq pq;
    struct qv_pq_params pqp;
    int direct_pq;              /* run on the card's own PQ scanner */
};

/* The kernel thread's mailbox. */
struct card_kernel {
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit;                   /* guarded by mu */
    int posted;                 /* guarded by mu: a job waits */
    int done;                   /* atomic: the job has finished */
    int rc;                     /* the job's status (QV_E*), read after done */
};

struct qv_fpga_sim {
    struct qv_fpga_sim_opts opts;
    char name[65];
    enum qv_fpga_sim_mode mode;
    uint8_t *bar;               /* BAR0, QV_FPGA_BAR0_SIZE bytes */
    int shm_fd;
    char shm_name[96];          /* QV_FPGA_SHM_PREFIX + name */

    /* threads */
    pthread_t loop_thread;
    int loop_started;
    int stop;                   /* atomic: the loop exits */
    int killed;                 /* atomic: qv_fpga_sim_kill */
    volatile int *ext_stop;     /* process mode: the caller's flag */
    struct card_kernel kern;

    /* engines: the bitstream and the CPU fallback.  engine is ocl until
     * the OpenCL engine turns unhealthy, then cpu for good; switched only
     * by the kernel thread while the loop waits for it. */
    struct qv_engine *engine;   /* the one units run on */
    struct qv_engine *ocl;      /* OpenCL engine, or NULL */
    struct qv_engine *cpu;      /* CPU engine (fallback, always there) */

    /* HBM */
    struct card_block **htab;   /* open addressing, NULL = empty */
    uint32_t hcap;              /* power of two */
    uint32_t nblocks;
    uint64_t hbm_used;
    uint32_t next_handle;

    /* queue pairs and loop state */
    struct card_qp qp[QV_FPGA_MAX_QPS];
    unsigned rr;                /* next QP to serve */
    int64_t last_tick_ns, last_work_ns;
    int64_t busy_ns_window;     /* busy time since the last tick */
    int64_t temp_mc;            /* temperature model state */

    /* faults */
    int hang, link_down, throttle, ecc_pending;
    int64_t hang_start_ns;
    int reset_requested;        /* CTRL.RESET seen; done between descriptors */
    uint32_t aborted;           /* descriptors completed with RESET before it */

    /* the descriptor in execution */
    struct card_desc_ctx cur;
    struct card_scan scan;
};

/* ---- BAR0 access (atomic, as the contract asks) ---- */

static inline uint32_t bar_rd32(const struct qv_fpga_sim *s, uint32_t off)
{
    return __atomic_load_n((const uint32_t *)(s->bar + off), __ATOMIC_ACQUIRE);
}

static inline void bar_wr32(struct qv_fpga_sim *s, uint32_t off, uint32_t v)
{
    __atomic_store_n((uint32_t *)(s->bar + off), v, __ATOMIC_RELEASE);
}

static inline uint64_t bar_rd64(const struct qv_fpga_sim *s, uint32_t off)
{
    return __atomic_load_n((const uint64_t *)(s->bar + off), __ATOMIC_ACQUIRE);
}

static inline void bar_wr64(struct qv_fpga_sim *s, uint32_t off, uint64_t v)
{
    __atomic_store_n((uint64_t *)(s->bar + off), v, __ATOMIC_RELEASE);
}

/* Only the card writes RO registers, so += is a load and a store. */
static inline void bar_add64(struct qv_fpga_sim *s, uint32_t off, uint64_t v)
{
    bar_wr64(s, off, bar_rd64(s, off) + v);
}

/* ---- card.c ---- */

/* Append an entry to the error log (ERRLOG_WIDX last, release). */
void qv__card_log(struct qv_fpga_sim *s, uint16_t code, uint8_t qp, uint8_t opcode,
                  uint32_t seq, uint64_t detail, uint32_t sq_index);
/* Resident block of handle h, or NULL.  O(1). */
struct card_block *qv__card_block_find(const struct qv_fpga_sim *s, uint32_t h);
/* Ids of block b's first n entries, generated on first need.  NULL on
 * ENOMEM. */
const uint64_t *qv__card_block_ids(struct card_block *b, uint32_t n);
/* Make buf hold at least bytes; 0 or QV_ENOMEM (old contents dropped). */
int qv__card_buf_reserve(struct qv_fpga_sim *s, struct card_buf *b, size_t bytes);
/* Run the unit in s->scan on the kernel thread while the loop keeps
 * ticking.  Returns the unit's status (0 or QV_E*); sets s->reset_requested
 * when CTRL.RESET was seen meanwhile.  -1 (not a QV_E*) when the card was
 * killed or stopped meanwhile. */
int qv__card_run_kernel(struct qv_fpga_sim *s);

/* ---- card_dma.c ---- */

/* 0 when [addr, addr + len) lies in one VALID region with all of `need`
 * (QV_FPGA_ATU_*) and addr % align == 0; else QV_FPGA_ST_BAD_ADDRESS with
 * s->cur.bad_addr set.  len 0 always passes.  align: power of two. */
int qv__card_dma_check(struct qv_fpga_sim *s, uint64_t addr, uint64_t len,
                       uint32_t need, uint64_t align);
/* Checked transfers: 0 or QV_FPGA_ST_BAD_ADDRESS.  Count the bytes. */
int qv__card_dma_read(struct qv_fpga_sim *s, void *dst, uint64_t addr, uint64_t len,
                      uint64_t align);
int qv__card_dma_write(struct qv_fpga_sim *s, uint64_t addr, const void *src, uint64_t len,
                       uint64_t align);
/* The completion: bytes 0x00..0x1B, then seq (release / own transfer).
 * 0 or QV_FPGA_ST_BAD_ADDRESS. */
int qv__card_dma_write_cpl(struct qv_fpga_sim *s, uint64_t addr,
                           const struct qv_fpga_cpl *c);

/* ---- card_scan.c ---- */

/* Validate and execute the SCAN d, fill *r.  The results are written
 * unless an ECC error is pending (s->ecc_pending: the caller turns the
 * completion into ECC_ERROR). */
void qv__card_scan(struct qv_fpga_sim *s, const struct qv_fpga_desc *d, struct card_result *r);
/* Free the scan scratch. */
void qv__card_scan_fini(struct qv_fpga_sim *s);
/* The kernel thread's job: run the unit in s->scan on the engine (CPU
 * fallback) or on the card's own PQ scanner.  0 or the unit's QV_E*. */
int qv__card_kernel_job(struct qv_fpga_sim *s);

#endif
