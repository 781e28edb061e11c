/*
 * fpga_regs.h - the contract between the Quiver FPGA card and its host
 * driver: register map (BAR0), queue-pair rings, descriptor, completion,
 * region (ATU) table, scan unit table and result formats.
 *
 * Shared, unchanged, by the card simulator (firmware-sim/) and the host
 * driver (host/engine/fpga.c).  docs/REGISTERS.md is the same contract as
 * OFFSET / SIZE / ACCESS / MEANING tables with the rules in prose (start-
 * up, ordering, reset, errors, faults, the timing model); read it first.
 * When the two disagree, fix both in the same commit.
 *
 * The model is an NVMe-like PCIe card:
 *   - BAR0 is a 64 KiB register window (simulator: the POSIX shm object
 *     /quiver-fpga-<name> that the card creates and the host maps; thread
 *     mode: plain memory).  Registers are little-endian, 32- or 64-bit,
 *     naturally aligned; a 64-bit register is one atomic access.
 *     Reserved space reads 0 and ignores writes.
 *   - Rings live in host memory: a submission ring of 64-byte descriptors
 *     that the card reads by DMA, and a completion ring of 32-byte
 *     completions it writes by DMA, per queue pair (up to 4).  The host
 *     rings a doorbell (SQ_TAIL, a free-running 32-bit index) and polls
 *     the completion's `seq`, which the card writes last: no interrupts.
 *   - A bus address is the host process's virtual address.  The card may
 *     DMA only inside regions the host registered in the ATU table; any
 *     other access fails the descriptor with QV_FPGA_ST_BAD_ADDRESS and is
 *     logged in the error log.
 *   - Device memory (HBM) holds blocks the host uploads (UPLOAD -> a
 *     32-bit handle); a SCAN names lists and tables by handle and takes
 *     its per-batch arrays (queries, probes, masks, PQ query tables) from
 *     host memory through a scan unit table.  Ids never go to the card:
 *     results are (distance, handle, entry index) and the host maps them.
 *
 * Everything here is a plain definition: no functions, no atomics (the
 * driver and the simulator choose how to access the window).  Structs are
 * naturally aligned without packing; every size and key offset is pinned
 * by _Static_assert below, so a layout change cannot go unnoticed.  The
 * host must be little-endian (x86-64, arm64).
 */
#ifndef QUIVER_FPGA_REGS_H
#define QUIVER_FPGA_REGS_H

#include <stddef.h>
#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "quiver/fpga_regs.h: the card's formats are little-endian"
#endif

/* ------------------------------------------------------------------ */
/* Identity and limits                                                  */
/* ------------------------------------------------------------------ */

#define QV_FPGA_BAR0_SIZE       0x10000u        /* 64 KiB */
#define QV_FPGA_SHM_PREFIX      "/quiver-fpga-" /* shm_open name: prefix + card name */

#define QV_FPGA_MAGIC           0x50465651u     /* "QVFP" as bytes */
#define QV_FPGA_VERSION_MAJOR   1u              /* host refuses another major */
#define QV_FPGA_VERSION_MINOR   0u
#define QV_FPGA_VERSION         ((QV_FPGA_VERSION_MAJOR << 16) | QV_FPGA_VERSION_MINOR)

#define QV_FPGA_MAX_QPS         4u
#define QV_FPGA_RING_MIN        16u             /* ring entries: power of two */
#define QV_FPGA_RING_MAX        4096u
#define QV_FPGA_MAX_K           256u
#define QV_FPGA_MAX_PQ_M        256u
#define QV_FPGA_ATU_ENTRIES     64u
#define QV_FPGA_ERRLOG_ENTRIES  32u

#define QV_FPGA_NONE            0xFFFFFFFFu     /* no handle / no mask / empty slot */
#define QV_FPGA_ADDR_NONE       0u              /* absent bus address */

/* ------------------------------------------------------------------ */
/* Global registers (offsets into BAR0)                                 */
/* ------------------------------------------------------------------ */

/* identity and capabilities: read-only */
#define QV_FPGA_REG_MAGIC           0x0000u     /* u32 QV_FPGA_MAGIC, written last at start */
#define QV_FPGA_REG_VERSION         0x0004u     /* u32 major << 16 | minor */
#define QV_FPGA_REG_CAPS_OPS        0x0008u     /* u32 bit (1 << opcode) per opcode */
#define QV_FPGA_REG_CAPS_SCAN       0x000Cu     /* u32 QV_FPGA_CAP_* */
#define QV_FPGA_REG_NUM_QPS         0x0010u     /* u32 queue pairs (4) */
#define QV_FPGA_REG_MAX_DIM         0x0014u     /* u32 */
#define QV_FPGA_REG_MAX_K           0x0018u     /* u32 (256) */
#define QV_FPGA_REG_MAX_NQ          0x001Cu     /* u32 queries per SCAN */
#define QV_FPGA_REG_HBM_BYTES       0x0020u     /* u64 device memory */
#define QV_FPGA_REG_MAX_PQ_M        0x0028u     /* u32 (256) */
#define QV_FPGA_REG_NUM_REGIONS     0x002Cu     /* u32 ATU entries (64) */

/* control and health */
#define QV_FPGA_REG_CTRL            0x0040u     /* u32 RW QV_FPGA_CTRL_* */
#define QV_FPGA_REG_STATUS          0x0044u     /* u32 RO QV_FPGA_STATUS_* */
#define QV_FPGA_REG_HEARTBEAT       0x0048u     /* u64 RO +1 per card loop tick (<= 1 ms) */
#define QV_FPGA_REG_TEMP_MC         0x0050u     /* s32 RO milli-degrees Celsius */
#define QV_FPGA_REG_INTR_STATUS     0x0054u     /* u32 RW1C reserved: polling only, reads 0 */
#define QV_FPGA_REG_INTR_MASK       0x0058u     /* u32 RW reserved, ignored */
#define QV_FPGA_REG_CLOCK_NS        0x0060u     /* u64 RO card clock (ns), error-log timebase */

/* counters: read-only, monotonic since the card started (not cleared by
 * reset) except HBM_USED and RESIDENT_BLOCKS */
#define QV_FPGA_REG_ECC_CORRECTED   0x0080u     /* u64 */
#define QV_FPGA_REG_ECC_UNCORRECTED 0x0088u     /* u64 */
#define QV_FPGA_REG_FAULTS          0x0090u     /* u64 fault events */
#define QV_FPGA_REG_COMPLETIONS     0x0098u     /* u64 completions written, all QPs */
#define QV_FPGA_REG_ERRORS          0x00A0u     /* u64 completions with status != OK */
#define QV_FPGA_REG_HBM_USED        0x00A8u     /* u64 bytes allocated (64-byte units) */
#define QV_FPGA_REG_RESIDENT_BLOCKS 0x00B0u     /* u32 live handles */
#define QV_FPGA_REG_DMA_READ_BYTES  0x00B8u     /* u64 host -> card */
#define QV_FPGA_REG_DMA_WRITE_BYTES 0x00C0u     /* u64 card -> host */
#define QV_FPGA_REG_DEVICE_NS       0x00C8u     /* u64 sum of completions' device_ns */

/* timing model: read-only mirrors of the simulator's parameters */
#define QV_FPGA_REG_CLOCK_MHZ       0x0100u     /* u32 kernel clock */
#define QV_FPGA_REG_LANES           0x0104u     /* u32 distance ops per cycle */
#define QV_FPGA_REG_HBM_MBPS        0x0108u     /* u32 HBM bandwidth, 10^6 B/s */
#define QV_FPGA_REG_PCIE_MBPS       0x010Cu     /* u32 PCIe DMA bandwidth, 10^6 B/s */
#define QV_FPGA_REG_LAUNCH_NS       0x0110u     /* u32 fixed cost per descriptor */
#define QV_FPGA_REG_QTILE           0x0114u     /* u32 queries sharing one list pass */

/* error log: entries at QV_FPGA_ERRLOG_ENTRY(i % 32) */
#define QV_FPGA_REG_ERRLOG_WIDX     0x0140u     /* u32 RO entries ever written */
#define QV_FPGA_REG_ERRLOG_SIZE     0x0144u     /* u32 RO 32 */

/* fault injection: SIMULATOR ONLY (a real card reads 0, ignores writes) */
#define QV_FPGA_REG_FAULT_INJECT    0x0200u     /* u32 RW write QV_FPGA_FAULT_*; card
                                                   writes 0 (FAULT_NONE) once applied */
#define QV_FPGA_REG_FAULT_ACTIVE    0x0204u     /* u32 RO QV_FPGA_FACTIVE_* */
#define QV_FPGA_REG_THROTTLE_FACTOR 0x0208u     /* u32 RW >= 1, default 4 */

/* simulator control: SIMULATOR ONLY */
#define QV_FPGA_REG_SIM_MODE        0x0240u     /* u32 RO enum qv_fpga_sim_mode */
#define QV_FPGA_REG_SIM_CARD_PID    0x0244u     /* u32 RO card process (process mode) */
#define QV_FPGA_REG_SIM_HOST_PID    0x0248u     /* u32 RW host process, DMA target */
#define QV_FPGA_REG_SIM_PACE        0x024Cu     /* u32 RW 1 = complete no earlier
                                                   than the modelled device time */

#define QV_FPGA_ERRLOG_BASE         0x0400u     /* 32 x 32 bytes */
#define QV_FPGA_ERRLOG_ENTRY(i)     (QV_FPGA_ERRLOG_BASE + (uint32_t)(i) * 32u)

/* CAPS_SCAN bits */
#define QV_FPGA_CAP_FLAT            (1u << 0)
#define QV_FPGA_CAP_SQ8             (1u << 1)
#define QV_FPGA_CAP_PQ4             (1u << 2)
#define QV_FPGA_CAP_PQ8             (1u << 3)
#define QV_FPGA_CAP_L2              (1u << 4)
#define QV_FPGA_CAP_IP              (1u << 5)
#define QV_FPGA_CAP_FILTER          (1u << 6)   /* QV_FPGA_SCAN_F_FILTER */
#define QV_FPGA_CAP_PROBE_TABLES    (1u << 7)   /* QV_FPGA_SCAN_F_PROBE_TABLES */
#define QV_FPGA_CAP_F16             (1u << 8)
#define QV_FPGA_CAP_SIMULATED       (1u << 31)  /* the card is firmware-sim */

/* CTRL bits */
#define QV_FPGA_CTRL_ENABLE         (1u << 0)   /* fetch descriptors */
#define QV_FPGA_CTRL_RESET          (1u << 1)   /* write 1; card clears when done */

/* STATUS bits */
#define QV_FPGA_STATUS_READY        (1u << 0)   /* initialised, not in reset */
#define QV_FPGA_STATUS_HALTED       (1u << 1)   /* not fetching, nothing in flight */
#define QV_FPGA_STATUS_LINK_DOWN    (1u << 2)   /* rings do not move */
#define QV_FPGA_STATUS_THROTTLED    (1u << 3)   /* device time x THROTTLE_FACTOR */
#define QV_FPGA_STATUS_FATAL        (1u << 4)   /* only RESET recovers */
#define QV_FPGA_STATUS_BUSY         (1u << 5)   /* a descriptor is executing */

/* ------------------------------------------------------------------ */
/* Queue-pair registers: block n at QV_FPGA_QP_BASE(n), n < NUM_QPS      */
/* ------------------------------------------------------------------ */

#define QV_FPGA_QP_BASE(n)          (0x1000u + (uint32_t)(n) * 0x100u)
#define QV_FPGA_QP_STRIDE           0x100u

#define QV_FPGA_QP_SQ_BASE          0x00u       /* u64 RW bus address, 64-aligned */
#define QV_FPGA_QP_CQ_BASE          0x08u       /* u64 RW bus address, 64-aligned */
#define QV_FPGA_QP_SQ_ENTRIES       0x10u       /* u32 RW power of two 16..4096 */
#define QV_FPGA_QP_CQ_ENTRIES       0x14u       /* u32 RW power of two 16..4096 */
#define QV_FPGA_QP_CTRL             0x18u       /* u32 RW QV_FPGA_QP_CTRL_* */
#define QV_FPGA_QP_STATUS           0x1Cu       /* u32 RO QV_FPGA_QP_ST_* | code << 16 */
#define QV_FPGA_QP_SQ_TAIL          0x20u       /* u32 RW doorbell, free-running */
#define QV_FPGA_QP_SQ_HEAD          0x24u       /* u32 RO descriptors consumed */
#define QV_FPGA_QP_CQ_HEAD          0x28u       /* u32 RW completions the host consumed */
#define QV_FPGA_QP_CQ_TAIL          0x2Cu       /* u32 RO completions written */
#define QV_FPGA_QP_ERRORS           0x30u       /* u64 RO completions with status != OK */
#define QV_FPGA_QP_DEVICE_NS        0x38u       /* u64 RO sum of device_ns */
#define QV_FPGA_QP_REG(n, r)        (QV_FPGA_QP_BASE(n) + (r))

#define QV_FPGA_QP_CTRL_ENABLE      (1u << 0)

#define QV_FPGA_QP_ST_RUNNING       (1u << 0)   /* configured and serving */
#define QV_FPGA_QP_ST_CONFIG_ERROR  (1u << 1)   /* enable refused / doorbell overrun */
#define QV_FPGA_QP_ST_CQ_FULL       (1u << 2)   /* waiting for CQ_HEAD to move */
#define QV_FPGA_QP_ST_CODE_SHIFT    16          /* enum qv_fpga_status of the error */
#define QV_FPGA_QP_ST_CODE(v)       ((uint32_t)(v) >> QV_FPGA_QP_ST_CODE_SHIFT)

/* ------------------------------------------------------------------ */
/* Region (ATU / IOMMU) table: entry i at QV_FPGA_ATU_ENTRY(i)          */
/* ------------------------------------------------------------------ */

#define QV_FPGA_ATU_BASE            0x2000u
#define QV_FPGA_ATU_ENTRY(i)        (QV_FPGA_ATU_BASE + (uint32_t)(i) * 32u)

#define QV_FPGA_ATU_READ            (1u << 0)   /* card may read (host -> card) */
#define QV_FPGA_ATU_WRITE           (1u << 1)   /* card may write (card -> host) */
#define QV_FPGA_ATU_VALID           (1u << 31)  /* set last, after base and len */

/* One region: the host writes base and len, then flags with VALID. */
struct qv_fpga_atu_entry {
    uint64_t base;              /* 0x00 bus address of the first byte */
    uint64_t len;               /* 0x08 bytes, >= 1 */
    uint32_t flags;             /* 0x10 QV_FPGA_ATU_* */
    uint32_t rsvd0;             /* 0x14 write 0 */
    uint64_t rsvd1;             /* 0x18 write 0 */
};

/* ------------------------------------------------------------------ */
/* Error log entry (BAR0, read-only)                                    */
/* ------------------------------------------------------------------ */

struct qv_fpga_errlog_entry {
    uint64_t time_ns;           /* 0x00 CLOCK_NS when logged */
    uint16_t code;              /* 0x08 enum qv_fpga_status or qv_fpga_event */
    uint8_t qp;                 /* 0x0A queue pair, 0xFF = card-wide */
    uint8_t opcode;             /* 0x0B descriptor's opcode, 0 = none */
    uint32_t seq;               /* 0x0C descriptor's seq, 0 = none */
    uint64_t detail;            /* 0x10 see docs/REGISTERS.md "Error log" */
    uint32_t sq_index;          /* 0x18 descriptor's SQ index (free-running) */
    uint32_t rsvd;              /* 0x1C */
};

/* detail of a BAD_PARAM / BAD_LENGTH: where the offending field is.
 * Bits 0..15 byte offset of the field, bits 16..17 what it is in, bits
 * 32..63 element index (IN_ARRAY: the array is the one whose address
 * field sits at that offset of the scan unit table). */
#define QV_FPGA_DETAIL_IN_DESC      (0u << 16)
#define QV_FPGA_DETAIL_IN_TABLE     (1u << 16)
#define QV_FPGA_DETAIL_IN_ARRAY     (2u << 16)
#define QV_FPGA_DETAIL(in, off, idx) \
    (((uint64_t)(idx) << 32) | (uint64_t)(in) | (uint64_t)(off))

/* ------------------------------------------------------------------ */
/* Codes                                                                */
/* ------------------------------------------------------------------ */

enum qv_fpga_opcode {
    QV_FPGA_OP_INVALID = 0,     /* a zeroed descriptor: BAD_OPCODE */
    QV_FPGA_OP_NOP = 1,
    QV_FPGA_OP_UPLOAD = 2,
    QV_FPGA_OP_FREE = 3,
    QV_FPGA_OP_SCAN = 4,
    QV_FPGA_OP__COUNT
};

/* completion status (u16); also error-log codes 1..0xFF */
enum qv_fpga_status {
    QV_FPGA_ST_OK = 0,
    QV_FPGA_ST_BAD_OPCODE = 1,  /* unknown opcode */
    QV_FPGA_ST_BAD_ADDRESS = 2, /* outside every fitting region, misaligned */
    QV_FPGA_ST_BAD_LENGTH = 3,  /* a length too small, zero or too large */
    QV_FPGA_ST_BAD_HANDLE = 4,  /* handle not resident */
    QV_FPGA_ST_BAD_PARAM = 5,   /* a field out of range or inconsistent */
    QV_FPGA_ST_NO_MEMORY = 6,   /* HBM full */
    QV_FPGA_ST_ECC_ERROR = 7,   /* uncorrectable ECC error: results lost */
    QV_FPGA_ST_RESET = 8,       /* aborted by a card reset */
    QV_FPGA_ST_INTERNAL = 9,    /* card bug or kernel failure */
    QV_FPGA_ST__COUNT
};

/* error-log codes of card events (not tied to one descriptor's status) */
enum qv_fpga_event {
    QV_FPGA_EV_QP_CONFIG = 0x100,   /* QP enable refused; detail = status */
    QV_FPGA_EV_DOORBELL = 0x101,    /* SQ_TAIL - SQ_HEAD > SQ_ENTRIES; detail = tail */
    QV_FPGA_EV_LINK_DOWN = 0x102,
    QV_FPGA_EV_LINK_UP = 0x103,
    QV_FPGA_EV_HANG = 0x104,        /* logged when the hang is cleared */
    QV_FPGA_EV_THROTTLE_ON = 0x105, /* detail = factor */
    QV_FPGA_EV_THROTTLE_OFF = 0x106,
    QV_FPGA_EV_ECC_CORRECTED = 0x107,
    QV_FPGA_EV_ECC_UNCORRECTED = 0x108,
    QV_FPGA_EV_RESET = 0x109,       /* reset done; detail = descriptors aborted */
    QV_FPGA_EV_FATAL = 0x10A,
};

/* FAULT_INJECT codes (simulator only) */
enum qv_fpga_fault {
    QV_FPGA_FAULT_NONE = 0,
    QV_FPGA_FAULT_HANG = 1,         /* rings and heartbeat stop */
    QV_FPGA_FAULT_ECC = 2,          /* next completion: ECC_ERROR */
    QV_FPGA_FAULT_LINK_DOWN = 3,    /* rings stop, STATUS.LINK_DOWN */
    QV_FPGA_FAULT_THROTTLE = 4,     /* device time x THROTTLE_FACTOR */
    QV_FPGA_FAULT_CLEAR = 5,        /* end every fault above */
    QV_FPGA_FAULT_ECC_CORRECTED = 6,/* ECC_CORRECTED++, no other effect */
    QV_FPGA_FAULT__COUNT
};

/* FAULT_ACTIVE bits */
#define QV_FPGA_FACTIVE_HANG        (1u << 0)
#define QV_FPGA_FACTIVE_ECC         (1u << 1)   /* pending, not yet consumed */
#define QV_FPGA_FACTIVE_LINK_DOWN   (1u << 2)
#define QV_FPGA_FACTIVE_THROTTLE    (1u << 3)

enum qv_fpga_sim_mode {
    QV_FPGA_SIM_NONE = 0,           /* real hardware */
    QV_FPGA_SIM_THREAD = 1,         /* card thread in the host process */
    QV_FPGA_SIM_PROCESS = 2,        /* card process, DMA by process_vm_* */
};

/* Encodings and metrics: the values of enum qv_wu_kind and enum
 * qv_metric (engine.h, dist.h); the driver asserts that they match
 * (compare as (int): -Wenum-compare). */
enum qv_fpga_kind {
    QV_FPGA_KIND_FLAT = 0,
    QV_FPGA_KIND_SQ8 = 1,
    QV_FPGA_KIND_PQ = 2,
    QV_FPGA_KIND_F16 = 3,       /* FLAT's layout in IEEE binary16 */
};

enum qv_fpga_metric {
    QV_FPGA_METRIC_L2 = 0,
    QV_FPGA_METRIC_IP = 1,
};

/* ------------------------------------------------------------------ */
/* Submission descriptor (64 bytes, SQ slot = index & (SQ_ENTRIES - 1)) */
/* ------------------------------------------------------------------ */

#define QV_FPGA_DESC_SIZE   64u

/* UPLOAD: copy len bytes at host address addr into a new HBM block;
 * completion.result = its handle. */
struct qv_fpga_desc_upload {
    uint64_t addr;              /* 0x10 bus address, any alignment */
    uint64_t len;               /* 0x18 bytes, 1..HBM_BYTES */
    uint64_t rsvd[4];           /* 0x20 zero */
};

/* FREE: release a block; its handle is invalid afterwards. */
struct qv_fpga_desc_free {
    uint32_t handle;            /* 0x10 */
    uint32_t rsvd0;             /* 0x14 zero */
    uint64_t rsvd[5];           /* 0x18 zero */
};

/* SCAN: run the unit described by the scan unit table at `table`;
 * kind, metric, dim, k, nq repeat the table's (must match). */
struct qv_fpga_desc_scan {
    uint8_t kind;               /* 0x10 enum qv_fpga_kind */
    uint8_t metric;             /* 0x11 enum qv_fpga_metric */
    uint16_t rsvd0;             /* 0x12 zero */
    uint32_t dim;               /* 0x14 1..MAX_DIM */
    uint32_t k;                 /* 0x18 1..MAX_K */
    uint32_t nq;                /* 0x1C 1..MAX_NQ */
    uint64_t table;             /* 0x20 bus address, 8-aligned, READ */
    uint64_t results;           /* 0x28 bus address, 16-aligned, WRITE */
    uint64_t results_len;       /* 0x30 bytes, >= nq * k * 16 */
    uint32_t table_len;         /* 0x38 sizeof(struct qv_fpga_scan_table) */
    uint32_t rsvd1;             /* 0x3C zero */
};

struct qv_fpga_desc {
    uint8_t opcode;             /* 0x00 enum qv_fpga_opcode */
    uint8_t flags;              /* 0x01 none defined: zero */
    uint16_t rsvd;              /* 0x02 zero */
    uint32_t seq;               /* 0x04 host-assigned; completion.seq = seq + 1 */
    uint64_t cookie;            /* 0x08 echoed in the completion */
    union {
        struct qv_fpga_desc_upload upload;
        struct qv_fpga_desc_free free;
        struct qv_fpga_desc_scan scan;
        uint8_t raw[48];
    } op;                       /* 0x10 */
};

/* ------------------------------------------------------------------ */
/* Completion (32 bytes, CQ slot = index & (CQ_ENTRIES - 1))            */
/* ------------------------------------------------------------------ */

#define QV_FPGA_CPL_SIZE    32u

/* The card writes bytes 0x00..0x1B first, then seq with a release store:
 * a host that sees the expected seq (acquire load) sees the rest, and
 * the results of a SCAN. */
struct qv_fpga_cpl {
    uint64_t cookie;            /* 0x00 descriptor's cookie */
    uint64_t device_ns;         /* 0x08 modelled device time (timing model) */
    uint32_t result;            /* 0x10 UPLOAD: handle; SCAN: nq * k;
                                   BAD_HANDLE: the handle; else 0 */
    uint32_t sq_head;           /* 0x14 SQ_HEAD after this descriptor */
    uint16_t status;            /* 0x18 enum qv_fpga_status */
    uint8_t opcode;             /* 0x1A descriptor's opcode */
    uint8_t qp;                 /* 0x1B queue pair index */
    uint32_t seq;               /* 0x1C descriptor's seq + 1, written last */
};

/* ------------------------------------------------------------------ */
/* Scan unit table (host memory, read by DMA; 256 bytes)                */
/* ------------------------------------------------------------------ */

#define QV_FPGA_SCAN_MAGIC          0x55535651u /* "QVSU" as bytes */

#define QV_FPGA_SCAN_F_FILTER       (1u << 0)   /* mask_offsets/mask_words given */
#define QV_FPGA_SCAN_F_PROBE_TABLES (1u << 1)   /* PQ: pq_probe_params (+ lut8) given */

/* One list of the unit (array at scan_table.lists, 16 bytes each). */
struct qv_fpga_scan_list {
    uint32_t codes;             /* 0x00 handle of the codes, NONE only when n == 0 */
    uint32_t norms;             /* 0x04 handle of n f32 |x|^2 (FLAT + L2), else NONE */
    uint32_t n;                 /* 0x08 entries */
    uint32_t list_no;           /* 0x0C PQ: coarse centroid (< pq_ncoarse) */
};

/* Per-probe PQ parameters (array at pq_probe_params, one per probe). */
struct qv_fpga_pq_probe {
    float bias;                 /* 0x00 added to every distance of the probe */
    float scale;                /* 0x04 nbits 4: 1 / a of pq.h; nbits 8: 0 */
};

/*
 * Variable arrays live at the bus addresses (4-aligned, in READ regions);
 * QV_FPGA_ADDR_NONE = absent.  "probe p" is a position in probe_lists:
 * query q's probes are p in [probe_offsets[q], probe_offsets[q + 1]).
 */
struct qv_fpga_scan_table {
    uint32_t magic;             /* 0x00 QV_FPGA_SCAN_MAGIC */
    uint8_t kind;               /* 0x04 = descriptor's */
    uint8_t metric;             /* 0x05 = descriptor's */
    uint16_t flags;             /* 0x06 QV_FPGA_SCAN_F_* */
    uint32_t dim;               /* 0x08 = descriptor's */
    uint32_t k;                 /* 0x0C = descriptor's */
    uint32_t nq;                /* 0x10 = descriptor's */
    uint32_t nlists;            /* 0x14 entries of lists[] */
    uint32_t nprobes;           /* 0x18 = probe_offsets[nq] */
    uint32_t code_size;         /* 0x1C bytes per entry: FLAT 4 * dim, F16 2 * dim,
                                   SQ8 >= dim,
                                   PQ8 m, PQ4 (m + 1) / 2 */
    uint32_t mask_nwords;       /* 0x20 u32 words at mask_words */
    uint32_t rsvd0;             /* 0x24 zero */
    uint64_t queries;           /* 0x28 nq x dim f32, row-major */
    uint64_t qnorms;            /* 0x30 nq f32 |q|^2: FLAT/F16 + L2, else
                                   QV_FPGA_ADDR_NONE */
    uint64_t probe_offsets;     /* 0x38 nq + 1 u32, [0] = 0, non-decreasing */
    uint64_t probe_lists;       /* 0x40 nprobes u32, each < nlists */
    uint64_t lists;             /* 0x48 nlists x struct qv_fpga_scan_list */
    uint64_t mask_offsets;      /* 0x50 FILTER: nlists u32 word offsets or NONE */
    uint64_t mask_words;        /* 0x58 FILTER: mask_nwords u32 */
    uint64_t sq8_vmin;          /* 0x60 SQ8: dim f32 */
    uint64_t sq8_vdiff;         /* 0x68 SQ8: dim f32 */
    uint32_t pq_m;              /* 0x70 sub-quantisers, 1..MAX_PQ_M, dim % m == 0 */
    uint32_t pq_nbits;          /* 0x74 4 or 8 */
    uint32_t pq_dsub;           /* 0x78 dim / m */
    uint32_t pq_ncoarse;        /* 0x7C coarse centroids (rows of coarse, ltab) */
    uint32_t pq_codebooks;      /* 0x80 handle: m x ksub x dsub f32, or NONE */
    uint32_t pq_coarse;         /* 0x84 handle: ncoarse x dim f32, or NONE */
    uint32_t pq_ltab;           /* 0x88 handle: ncoarse x m x ksub f32, or NONE */
    uint32_t rsvd1;             /* 0x8C zero */
    uint64_t pq_qtab;           /* 0x90 nq x m x ksub f32, or NONE */
    uint64_t pq_probe_params;   /* 0x98 PROBE_TABLES: nprobes x qv_fpga_pq_probe */
    uint64_t pq_probe_lut8;     /* 0xA0 PROBE_TABLES + nbits 4: nprobes x mp x 16 u8 */
    uint64_t rsvd2[11];         /* 0xA8 zero */
};

/* ------------------------------------------------------------------ */
/* Result entry (host memory, written by DMA)                           */
/* ------------------------------------------------------------------ */

/* results[q * k + i], i < k: ascending (dist, handle, entry); unused
 * slots are {+inf, NONE, NONE, 0}. */
struct qv_fpga_result {
    float dist;                 /* 0x00 smaller is nearer */
    uint32_t handle;            /* 0x04 the list's codes handle */
    uint32_t entry;             /* 0x08 entry index within the list */
    uint32_t rsvd;              /* 0x0C 0 */
};

/* ------------------------------------------------------------------ */
/* Layout checks                                                        */
/* ------------------------------------------------------------------ */

_Static_assert(sizeof(float) == 4, "fpga_regs: float must be IEEE binary32");

_Static_assert(sizeof(struct qv_fpga_atu_entry) == 32, "atu entry");
_Static_assert(offsetof(struct qv_fpga_atu_entry, flags) == 0x10, "atu flags");

_Static_assert(sizeof(struct qv_fpga_errlog_entry) == 32, "errlog entry");
_Static_assert(offsetof(struct qv_fpga_errlog_entry, code) == 0x08, "errlog code");
_Static_assert(offsetof(struct qv_fpga_errlog_entry, detail) == 0x10, "errlog detail");
_Static_assert(offsetof(struct qv_fpga_errlog_entry, sq_index) == 0x18, "errlog index");

_Static_assert(sizeof(struct qv_fpga_desc_upload) == 48, "upload body");
_Static_assert(sizeof(struct qv_fpga_desc_free) == 48, "free body");
_Static_assert(sizeof(struct qv_fpga_desc_scan) == 48, "scan body");
_Static_assert(sizeof(struct qv_fpga_desc) == QV_FPGA_DESC_SIZE, "descriptor");
_Static_assert(offsetof(struct qv_fpga_desc, seq) == 0x04, "desc seq");
_Static_assert(offsetof(struct qv_fpga_desc, cookie) == 0x08, "desc cookie");
_Static_assert(offsetof(struct qv_fpga_desc, op) == 0x10, "desc body");
_Static_assert(offsetof(struct qv_fpga_desc, op.upload.len) == 0x18, "upload len");
_Static_assert(offsetof(struct qv_fpga_desc, op.free.handle) == 0x10, "free handle");
_Static_assert(offsetof(struct qv_fpga_desc, op.scan.dim) == 0x14, "scan dim");
_Static_assert(offsetof(struct qv_fpga_desc, op.scan.table) == 0x20, "scan table");
_Static_assert(offsetof(struct qv_fpga_desc, op.scan.results_len) == 0x30, "scan results");
_Static_assert(offsetof(struct qv_fpga_desc, op.scan.table_len) == 0x38, "scan table_len");

_Static_assert(sizeof(struct qv_fpga_cpl) == QV_FPGA_CPL_SIZE, "completion");
_Static_assert(offsetof(struct qv_fpga_cpl, device_ns) == 0x08, "cpl device_ns");
_Static_assert(offsetof(struct qv_fpga_cpl, result) == 0x10, "cpl result");
_Static_assert(offsetof(struct qv_fpga_cpl, status) == 0x18, "cpl status");
_Static_assert(offsetof(struct qv_fpga_cpl, seq) == 0x1C, "cpl seq is the last word");

_Static_assert(sizeof(struct qv_fpga_scan_list) == 16, "scan list");
_Static_assert(sizeof(struct qv_fpga_pq_probe) == 8, "pq probe");
_Static_assert(sizeof(struct qv_fpga_scan_table) == 256, "scan table");
_Static_assert(offsetof(struct qv_fpga_scan_table, queries) == 0x28, "table queries");
_Static_assert(offsetof(struct qv_fpga_scan_table, lists) == 0x48, "table lists");
_Static_assert(offsetof(struct qv_fpga_scan_table, sq8_vmin) == 0x60, "table sq8");
_Static_assert(offsetof(struct qv_fpga_scan_table, pq_m) == 0x70, "table pq");
_Static_assert(offsetof(struct qv_fpga_scan_table, pq_codebooks) == 0x80, "table pq handles");
_Static_assert(offsetof(struct qv_fpga_scan_table, pq_qtab) == 0x90, "table qtab");
_Static_assert(offsetof(struct qv_fpga_scan_table, pq_probe_lut8) == 0xA0, "table lut8");
_Static_assert(sizeof(struct qv_fpga_result) == 16, "result entry");

/* the blocks of BAR0 do not overlap and fit the window */
_Static_assert(QV_FPGA_REG_SIM_PACE + 4 <= QV_FPGA_ERRLOG_BASE, "registers / errlog");
_Static_assert(QV_FPGA_ERRLOG_ENTRY(QV_FPGA_ERRLOG_ENTRIES) <= QV_FPGA_QP_BASE(0),
               "errlog / queue pairs");
_Static_assert(QV_FPGA_QP_DEVICE_NS + 8 <= QV_FPGA_QP_STRIDE, "queue-pair block");
_Static_assert(QV_FPGA_QP_BASE(QV_FPGA_MAX_QPS) <= QV_FPGA_ATU_BASE, "queue pairs / atu");
_Static_assert(QV_FPGA_ATU_ENTRY(QV_FPGA_ATU_ENTRIES) <= QV_FPGA_BAR0_SIZE, "atu / window");
_Static_assert(QV_FPGA_REG_HBM_BYTES % 8 == 0 && QV_FPGA_REG_HEARTBEAT % 8 == 0 &&
               QV_FPGA_REG_CLOCK_NS % 8 == 0 && QV_FPGA_REG_ECC_CORRECTED % 8 == 0 &&
               QV_FPGA_REG_DEVICE_NS % 8 == 0 && QV_FPGA_QP_SQ_BASE % 8 == 0 &&
               QV_FPGA_QP_CQ_BASE % 8 == 0 && QV_FPGA_QP_ERRORS % 8 == 0,
               "64-bit registers are 8-aligned");

#endif
