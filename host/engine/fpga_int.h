/*
 * fpga_int.h - private structure of the FPGA engine (fpga.c), the host
 * driver of the Quiver FPGA card.  The contract with the card is
 * docs/REGISTERS.md (quiver/fpga_regs.h); this comment says how the driver
 * uses it and why.
 *
 * MEMORY THE CARD SEES
 *
 *   The card may DMA only inside regions registered in its 64-entry ATU
 *   table.  The driver splits the table in two:
 *
 *   ENTRY        REGION                                       FLAGS
 *   0            the rings: SQ (entries x 64) then CQ          READ | WRITE
 *                (entries x 32), one qv_malloc block
 *   1 .. 8       slot s's staging buffer (below)              READ | WRITE
 *   9 .. 63      dynamic: caller memory the card reads in     READ
 *                place - a unit's queries, query norms, PQ
 *                query tables, and the source of each UPLOAD
 *
 *   Dynamic entries are page-rounded ([base & ~4095, round_up(end,
 *   4096))) so that a batch's queries, its norms and the next batch in the
 *   same buffer usually fall into one entry that is reused as is: a range
 *   already covered by a valid entry costs no register write.  Each entry
 *   remembers the SQ index of the last descriptor that uses it; it may be
 *   rewritten only once the completion of that index has been consumed
 *   (cq_head past it), and then the least recently used such entry goes.
 *   Vectors are never copied by the host.
 *
 * STAGING (per slot, grow-only, re-registered on growth)
 *
 *   OFFSET (64-aligned pieces)  CONTENT
 *   0                           nsub scan unit tables (256 bytes each)
 *   off_res                     nq x k results (16 bytes each), all subs
 *   off_poff                    per sub: nq_s + 1 probe offsets from 0
 *   off_plist                   P probe lists, remapped to compact lists
 *   off_lists                   nc list entries (16 bytes)
 *   off_moff, off_mwords        FILTER: nc mask offsets, W mask words
 *   off_vmin, off_vdiff         SQ8: dim floats each
 *   off_pparams                 PQ: P x {bias, scale} (PROBE_TABLES)
 *   off_lut8                    PQ 4-bit: P x mp x 16 bytes
 *
 *   Compact lists: only the unit's probed lists go to the card (the card
 *   validates every list entry of a table, and an unprobed list would need
 *   a handle, hence an upload).  lmap[list] = compact index; clist[c] =
 *   list.  A unit of more than MAX_NQ queries becomes nsub SCANs over
 *   query ranges that share the list entries, masks and PQ arrays (each
 *   sub's table points at its slice); its results are merged only when
 *   every sub has completed OK, so a unit that fails leaves its heaps
 *   untouched.
 *
 * RESIDENT BLOCKS
 *
 *   Lists (codes, norms) and PQ index tables are uploaded once and kept,
 *   in an open-addressing table keyed by host pointer (linear probing,
 *   backward-shift deletion) holding (bytes, handle, last use, last SQ
 *   index).  A hit with other bytes is stale: it is freed and uploaded
 *   again.  Room is made before an UPLOAD (budget) and after NO_MEMORY by
 *   FREEing the least recently used block not used by the unit being
 *   built, preferring blocks no descriptor in flight uses; freeing one in
 *   use is still safe, because the card runs a QP's descriptors in ring
 *   order and the FREE goes after the SCANs that read it.  Results map
 *   back through a per-slot hash of (codes handle -> compact list), so an
 *   eviction never disturbs a unit in flight.
 *
 * PREFETCH (qv_engine_prefetch, engine.h)
 *
 *   The lists of a unit waiting in a batcher are uploaded ahead of it:
 *   one UPLOAD per block not resident (codes, L2 FLAT norms), pushed and
 *   doorbelled without waiting.  The block enters the resident table at
 *   once as PENDING (no handle yet, its bytes charged to the budget, the
 *   UPLOAD's SQ index in up_idx); pend[] names the block (host), so the
 *   completion, consumed by reap() on the normal poll path, gives it its
 *   handle, or drops it (NO_MEMORY: the card is fuller than budgeted;
 *   any other status: counted as an error completion).  A unit that
 *   wants a pending block waits for that UPLOAD's completion in submit
 *   (the handle goes into its list table) instead of uploading again;
 *   forget of a pending block waits too (the UPLOAD reads host memory its
 *   owner is about to free).  Pending blocks are never evicted.
 *
 *   A prefetch never waits and never crowds units out.  It declines
 *   (QV_EBUSY) rather than take the last quarter of the ring (units'
 *   SCANs) or leave fewer than FPGA_PREFETCH_KEEP_REGIONS dynamic regions
 *   idle (three per slot: a unit's queries, norms and query tables); it
 *   evicts for room only blocks no descriptor in flight reads (never one
 *   of its own lists: they carry the newest serial), and declines
 *   (QV_ENOSPC) what the budget still cannot take.  Each UPLOAD source is
 *   a dynamic region, so with separately allocated lists one prefetch
 *   starts at most about 64 - 9 - 24 = 31 uploads at a time; the rest
 *   are uploaded by their unit as before.
 *
 * RING PROTOCOL AND COMPLETIONS
 *
 *   One QP per engine.  Descriptor i goes to SQ slot i & (entries - 1)
 *   with seq = i and cookie = epoch << 32 | i (epoch counts setups, so a
 *   completion from before a reset can never be mistaken for a new one).
 *   pend[i & mask] records what descriptor i is (NOP, UPLOAD, FREE, SCAN
 *   of a slot).  SQ_TAIL is written once per batch (release).  The host
 *   keeps sq_tail - cq_head <= entries, which with CQ entries = SQ entries
 *   means the card never finds the CQ full and the doorbell never
 *   overruns.  reap() consumes completions in order (acquire load of seq
 *   == i + 1) and writes CQ_HEAD once per call; it never reads SQ_HEAD.
 *
 * HEALTH: A STATE MACHINE DRIVEN BY poll() AND submit()
 *
 *   RUNNING     normal service.  Checks, each at most every
 *               max(1 ms, watchdog_ms / 8) (two or three MMIO reads):
 *               MAGIC = 0xFFFFFFFF or STATUS FATAL / LINK_DOWN -> fault;
 *               HEARTBEAT unchanged for watchdog_ms while descriptors are
 *               outstanding -> fault (watchdog).  Every call: no
 *               completion for timeout_ms while descriptors are
 *               outstanding -> fault (timeout; the clock restarts at each
 *               completion and at a doorbell onto an idle ring).  A
 *               completion with ECC_ERROR, RESET or INTERNAL -> fault.
 *   fault       counts it, fails every unit not yet completed with QV_EIO
 *               (their heaps untouched), forgets every handle and dynamic
 *               region (a reset clears HBM and the ATU), health =
 *               QV_EUNAVAIL, writes CTRL.RESET -> RESETTING.
 *   RESETTING   CTRL.RESET clear and STATUS.READY -> set up the QP and
 *               regions again -> RUNNING (health 0).  Past
 *               reset_timeout_ms -> DOWN.
 *   DOWN        the card did not come back (its process died).  At most
 *               every watchdog_ms: probe again (process mode: map the shm
 *               object anew, a restarted qv-fpga-sim makes a new one) and,
 *               if MAGIC and VERSION are right, reset -> RESETTING.
 *   No call blocks for a reset, so a poll loop hands the failed units
 *   back within one check period of the fault.  No unit is lost (every
 *   accepted unit is in a slot until poll hands it back) or completed
 *   twice (a slot moves FLIGHT -> DONE once; completions of an old epoch
 *   are never read: the CQ is zeroed at each setup).
 *
 * POLLING A SIMULATED CARD
 *
 *   A simulated card (SIM_MODE thread or process) runs on this machine's
 *   cores, and a caller typically polls in a loop (qv_engine_run): on a
 *   small machine the spinning caller took the cores from the card's loop
 *   and kernel threads (siftsmall IVF nprobe 8, batch 1, 2 CPUs, the
 *   card's CPU engine: median 1.3 ms per unit; 0.14 ms with this rule).
 *   So poll(), when the oldest unit is in flight and nothing completed
 *   for FPGA_SIM_SPIN_NS, sleeps FPGA_SIM_BACKOFF_NS before returning (a
 *   system call, on simulated cards only).  A real card: never.
 *
 * WHAT ALLOCATES
 *
 *   create (rings, slots' host arrays); the first units of a new size
 *   (staging, per-slot arrays, the handle hash, PQ scratch: grow-only);
 *   uploads (resident table growth).  A unit of a size seen before whose
 *   blocks are resident allocates nothing, makes no system call
 *   (qv_now_ns is the vDSO) and takes no lock.
 */
#ifndef QV_FPGA_INT_H
#define QV_FPGA_INT_H

#include <stddef.h>
#include <stdint.h>

#include "quiver/engine.h"
#include "quiver/engine_fpga.h"
#include "quiver/fpga_regs.h"

#define FPGA_ATU_RINGS      0u
#define FPGA_ATU_SLOT0      1u              /* slot s: entry 1 + s */
#define FPGA_ATU_DYN0       (FPGA_ATU_SLOT0 + QV_FPGA_SLOTS)
#define FPGA_PAGE           4096u
#define FPGA_NONE           QV_FPGA_NONE
#define FPGA_SIM_SPIN_NS    50000           /* poll spins this long ... */
#define FPGA_SIM_BACKOFF_NS 20000           /* ... then sleeps this long */
#define FPGA_PREFETCH_KEEP_REGIONS (3u * QV_FPGA_SLOTS) /* idle regions a
                                               prefetch leaves to units */

enum fpga_state {
    FPGA_RUNNING = 0,
    FPGA_RESETTING,
    FPGA_DOWN,
};

enum fpga_pend_op {
    FPGA_P_NONE = 0,
    FPGA_P_NOP,
    FPGA_P_UPLOAD,
    FPGA_P_FREE,
    FPGA_P_SCAN,
    FPGA_P_PREFETCH,                /* an UPLOAD sent by prefetch */
};

/* What descriptor i is, and (UPLOAD, NOP) what its completion said. */
struct fpga_pend {
    uint8_t op;                     /* enum fpga_pend_op */
    uint8_t slot;                   /* SCAN: the slot */
    uint16_t status;                /* filled by reap (UPLOAD, NOP) */
    uint32_t result;                /* UPLOAD: the handle */
    uint64_t device_ns;
    const void *host;               /* PREFETCH: the block (table key) */
};

/* A dynamic ATU entry. */
struct fpga_region {
    uint64_t base, end;             /* page-rounded [base, end) */
    uint64_t last_use;              /* engine serial, for LRU */
    uint32_t last_idx;              /* last SQ index using it */
    uint8_t valid;                  /* registered on the card */
    uint8_t used;                   /* last_idx is meaningful */
};

/* A resident block (codes, norms, PQ table). */
struct fpga_resident {
    const void *host;               /* key; NULL = empty bucket */
    uint64_t bytes;                 /* bytes uploaded */
    uint64_t charged;               /* bytes rounded up to 64 (card's HBM_USED) */
    uint64_t last_use;              /* engine serial */
    uint32_t handle;
    uint32_t last_idx;              /* last SQ index of a SCAN using it */
    uint8_t used;                   /* last_idx is meaningful */
    uint8_t pending;                /* prefetch UPLOAD in flight: no handle */
    uint32_t up_idx;                /* pending: SQ index of that UPLOAD */
};

/* One block a unit needs that is not resident. */
struct fpga_need {
    const void *host;
    uint64_t bytes;
    uint32_t *out;                  /* where its handle goes (staging) */
    uint32_t idx;                   /* SQ index of its UPLOAD in this round */
    uint8_t done;
};

enum fpga_slot_state {
    FPGA_SLOT_FREE = 0,
    FPGA_SLOT_BUILD,                /* submit() is preparing it */
    FPGA_SLOT_FLIGHT,               /* its SCANs are on the ring */
    FPGA_SLOT_DONE,                 /* waiting for poll() */
};

struct fpga_slot {
    struct qv_work_unit *wu;
    int state;                      /* enum fpga_slot_state */
    int status;
    uint32_t k, nq, nc, nsub, subs_done;
    uint32_t last_idx;              /* SQ index of its last SCAN */
    uint64_t device_ns, bytes;      /* modelled time, PCIe bytes */
    /* staging (registered at ATU entry FPGA_ATU_SLOT0 + index) */
    uint8_t *stage;
    size_t stage_cap;
    size_t off_res, off_poff, off_plist, off_lists, off_moff, off_mwords;
    size_t off_vmin, off_vdiff, off_pparams, off_lut8;
    /* host-side arrays, grow-only */
    uint32_t *lmap;                 /* nlists: list -> compact or NONE */
    size_t lmap_cap;
    uint32_t *clist;                /* nc: compact -> list */
    size_t clist_cap;
    uint32_t *hkey, *hval;          /* codes handle -> compact, open addressing */
    uint32_t hcap;                  /* power of two >= 2 nc, or 0 */
};

struct fpga_engine {
    struct qv_engine base;
    struct qv_fpga_opts o;
    char name[65];

    /* BAR0 */
    volatile uint8_t *bar;
    int bar_mapped;                 /* 1: our mmap of the shm object */
    uint32_t sim_mode, card_pid;

    /* identity */
    uint32_t caps_ops, caps_scan, num_qps, max_dim, max_k, max_nq, max_pq_m;
    uint32_t num_regions, pcie_mbps;
    uint64_t hbm_bytes, budget;

    /* rings */
    uint8_t *rings;                 /* SQ then CQ */
    struct qv_fpga_desc *sq;
    struct qv_fpga_cpl *cq;
    struct fpga_pend *pend;
    uint32_t entries, mask;
    uint32_t sq_tail;               /* next descriptor index */
    uint32_t sq_db;                 /* SQ_TAIL last written */
    uint32_t cq_head;               /* next completion expected */
    uint32_t epoch;

    /* health */
    int state;                      /* enum fpga_state */
    int health;                     /* 0 or QV_EUNAVAIL */
    int64_t check_ns, watchdog_ns, timeout_ns, reset_ns;
    int64_t t_check;                /* last register check */
    int64_t t_hb;                   /* when HEARTBEAT last changed */
    uint64_t hb;
    int64_t t_progress;             /* last completion or idle doorbell */
    int64_t t_reset_deadline, t_next_probe;

    /* slots: FIFO of units, head .. head + count */
    struct fpga_slot slots[QV_FPGA_SLOTS];
    unsigned head, count;
    uint64_t serial;                /* units submitted, for LRU */

    /* dynamic regions: ATU entries FPGA_ATU_DYN0 + i */
    struct fpga_region regions[QV_FPGA_ATU_ENTRIES];
    unsigned nregions;

    /* resident blocks */
    struct fpga_resident *res;
    size_t res_cap, res_n;
    uint64_t res_bytes;             /* charged bytes, FREEs queued deducted */
    uint32_t prefetch_pending;      /* prefetch UPLOADs not yet completed */

    /* cold-path scratch */
    struct fpga_need *needs;
    size_t needs_cap;
    float *pq_lut, *pq_resid;
    uint8_t *pq_lut8;
    size_t pq_cap;

    uint32_t errlog_seen;
    struct qv_fpga_stats st;
};

#endif
