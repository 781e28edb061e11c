/*
 * ctl_main.c - qv-fpga-ctl: look at and poke a simulated card's BAR0.
 *
 *   qv-fpga-ctl --name NAME status        registers in human form
 *   qv-fpga-ctl --name NAME errlog        the error log, decoded
 *   qv-fpga-ctl --name NAME inject hang|ecc|ecc-corrected|link-down|
 *                                  throttle [--factor N]|clear
 *   qv-fpga-ctl --name NAME clear         same as inject clear
 *   qv-fpga-ctl --name NAME reset         CTRL.RESET, wait for the card
 *
 * It maps /dev/shm/quiver-fpga-NAME (the window qv-fpga-sim made) and uses
 * only the registers of docs/REGISTERS.md, with atomic 32/64-bit accesses.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fpga_sim.h"

static uint8_t *bar;

static uint32_t rd32(uint32_t off)
{
    return __atomic_load_n((uint32_t *)(bar + off), __ATOMIC_ACQUIRE);
}

static uint64_t rd64(uint32_t off)
{
    return __atomic_load_n((uint64_t *)(bar + off), __ATOMIC_ACQUIRE);
}

static void wr32(uint32_t off, uint32_t v)
{
    __atomic_store_n((uint32_t *)(bar + off), v, __ATOMIC_RELEASE);
}

static void sleep_ms(int ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
}

static const char *status_name(unsigned c)
{
    static const char *n[] = { "OK", "BAD_OPCODE", "BAD_ADDRESS", "BAD_LENGTH", "BAD_HANDLE",
                               "BAD_PARAM", "NO_MEMORY", "ECC_ERROR", "RESET", "INTERNAL" };
    static const char *ev[] = { "EV_QP_CONFIG", "EV_DOORBELL", "EV_LINK_DOWN", "EV_LINK_UP",
                                "EV_HANG", "EV_THROTTLE_ON", "EV_THROTTLE_OFF",
                                "EV_ECC_CORRECTED", "EV_ECC_UNCORRECTED", "EV_RESET",
                                "EV_FATAL" };
    if (c < sizeof n / sizeof n[0])
        return n[c];
    if (c >= 0x100 && c - 0x100 < sizeof ev / sizeof ev[0])
        return ev[c - 0x100];
    return "?";
}

static const char *opcode_name(unsigned op)
{
    static const char *n[] = { "-", "NOP", "UPLOAD", "FREE", "SCAN" };
    return op < sizeof n / sizeof n[0] ? n[op] : "?";
}

static void print_bits(uint32_t v, const char *const *names, unsigned count)
{
    int any = 0;
    for (unsigned b = 0; b < count; b++)
        if (v & (1u << b)) {
            printf("%s%s", any ? "|" : "", names[b]);
            any = 1;
        }
    if (!any)
        printf("-");
}

static int cmd_status(const char *name)
{
    static const char *st[] = { "READY", "HALTED", "LINK_DOWN", "THROTTLED", "FATAL", "BUSY" };
    static const char *fa[] = { "HANG", "ECC", "LINK_DOWN", "THROTTLE" };
    static const char *qs[] = { "RUNNING", "CONFIG_ERROR", "CQ_FULL" };
    uint32_t ver = rd32(QV_FPGA_REG_VERSION);
    printf("card %s: magic 0x%08x version %u.%u mode %s card pid %u host pid %u\n", name,
           rd32(QV_FPGA_REG_MAGIC), ver >> 16, ver & 0xffff,
           rd32(QV_FPGA_REG_SIM_MODE) == 2 ? "process" : rd32(QV_FPGA_REG_SIM_MODE) == 1
                                                            ? "thread" : "real",
           rd32(QV_FPGA_REG_SIM_CARD_PID), rd32(QV_FPGA_REG_SIM_HOST_PID));
    printf("status     ");
    print_bits(rd32(QV_FPGA_REG_STATUS), st, 6);
    printf("   ctrl 0x%x   pace %u\n", rd32(QV_FPGA_REG_CTRL), rd32(QV_FPGA_REG_SIM_PACE));
    printf("heartbeat  %llu   clock %.3f s   temperature %.1f C\n",
           (unsigned long long)rd64(QV_FPGA_REG_HEARTBEAT),
           (double)rd64(QV_FPGA_REG_CLOCK_NS) / 1e9,
           (int32_t)rd32(QV_FPGA_REG_TEMP_MC) / 1000.0);
    printf("faults     %llu injected; active ", (unsigned long long)rd64(QV_FPGA_REG_FAULTS));
    print_bits(rd32(QV_FPGA_REG_FAULT_ACTIVE), fa, 4);
    printf("; throttle factor %u\n", rd32(QV_FPGA_REG_THROTTLE_FACTOR));
    printf("ecc        corrected %llu   uncorrected %llu\n",
           (unsigned long long)rd64(QV_FPGA_REG_ECC_CORRECTED),
           (unsigned long long)rd64(QV_FPGA_REG_ECC_UNCORRECTED));
    uint64_t used = rd64(QV_FPGA_REG_HBM_USED), total = rd64(QV_FPGA_REG_HBM_BYTES);
    printf("hbm        %llu of %llu bytes used (%.2f%%), %u blocks\n",
           (unsigned long long)used, (unsigned long long)total,
           total ? 100.0 * (double)used / (double)total : 0.0,
           rd32(QV_FPGA_REG_RESIDENT_BLOCKS));
    printf("counters   completions %llu   errors %llu   device %.3f ms\n",
           (unsigned long long)rd64(QV_FPGA_REG_COMPLETIONS),
           (unsigned long long)rd64(QV_FPGA_REG_ERRORS),
           (double)rd64(QV_FPGA_REG_DEVICE_NS) / 1e6);
    printf("dma        read %llu B   written %llu B\n",
           (unsigned long long)rd64(QV_FPGA_REG_DMA_READ_BYTES),
           (unsigned long long)rd64(QV_FPGA_REG_DMA_WRITE_BYTES));
    printf("timing     %u MHz x %u lanes, hbm %u MB/s, pcie %u MB/s, launch %u ns, qtile %u\n",
           rd32(QV_FPGA_REG_CLOCK_MHZ), rd32(QV_FPGA_REG_LANES), rd32(QV_FPGA_REG_HBM_MBPS),
           rd32(QV_FPGA_REG_PCIE_MBPS), rd32(QV_FPGA_REG_LAUNCH_NS), rd32(QV_FPGA_REG_QTILE));
    for (unsigned n = 0; n < QV_FPGA_MAX_QPS; n++) {
        uint32_t s = rd32(QV_FPGA_QP_REG(n, QV_FPGA_QP_STATUS));
        printf("qp %u       ", n);
        print_bits(s & 0xffff, qs, 3);
        if (s & QV_FPGA_QP_ST_CONFIG_ERROR)
            printf(" (%s)", status_name(QV_FPGA_QP_ST_CODE(s)));
        printf("  sq %u/%u head/tail of %u  cq %u/%u head/tail of %u  errors %llu\n",
               rd32(QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_HEAD)),
               rd32(QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_TAIL)),
               rd32(QV_FPGA_QP_REG(n, QV_FPGA_QP_SQ_ENTRIES)),
               rd32(QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_HEAD)),
               rd32(QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_TAIL)),
               rd32(QV_FPGA_QP_REG(n, QV_FPGA_QP_CQ_ENTRIES)),
               (unsigned long long)rd64(QV_FPGA_QP_REG(n, QV_FPGA_QP_ERRORS)));
    }
    printf("error log  %u entries written\n", rd32(QV_FPGA_REG_ERRLOG_WIDX));
    return 0;
}

static int cmd_errlog(void)
{
    uint32_t w = rd32(QV_FPGA_REG_ERRLOG_WIDX);
    uint32_t first = w > QV_FPGA_ERRLOG_ENTRIES ? w - QV_FPGA_ERRLOG_ENTRIES : 0;
    if (w == 0)
        printf("error log empty\n");
    if (first)
        printf("(%u older entries overwritten)\n", first);
    for (uint32_t i = first; i < w; i++) {
        struct qv_fpga_errlog_entry e;
        memcpy(&e, bar + QV_FPGA_ERRLOG_ENTRY(i % QV_FPGA_ERRLOG_ENTRIES), sizeof e);
        printf("#%-4u %12.6f s  %-18s", i, (double)e.time_ns / 1e9, status_name(e.code));
        if (e.qp != 0xFF)
            printf(" qp %u %s seq %u sq %u", e.qp, opcode_name(e.opcode), e.seq, e.sq_index);
        if (e.code == QV_FPGA_ST_BAD_PARAM || e.code == QV_FPGA_ST_BAD_LENGTH) {
            static const char *in[] = { "descriptor", "table", "array", "?" };
            unsigned where = (unsigned)(e.detail >> 16) & 3;
            printf("  at %s+0x%02x", in[where], (unsigned)(e.detail & 0xffff));
            if (where == 2)
                printf("[%u]", (unsigned)(e.detail >> 32));
        } else if (e.code == QV_FPGA_ST_BAD_ADDRESS) {
            printf("  address 0x%llx", (unsigned long long)e.detail);
        } else if (e.code == QV_FPGA_EV_QP_CONFIG) {
            printf("  qp %u: %s", e.qp, status_name((unsigned)e.detail));
        } else {
            printf("  detail %llu", (unsigned long long)e.detail);
        }
        printf("\n");
    }
    return 0;
}

static int wait_zero(uint32_t off, uint32_t mask, int ms)
{
    for (int t = 0; t < ms; t++) {
        if (!(rd32(off) & mask))
            return 0;
        sleep_ms(1);
    }
    return -1;
}

static int cmd_inject(const char *name, const char *what, unsigned factor)
{
    static const struct { const char *n; enum qv_fpga_fault f; } faults[] = {
        { "hang", QV_FPGA_FAULT_HANG }, { "ecc", QV_FPGA_FAULT_ECC },
        { "ecc-corrected", QV_FPGA_FAULT_ECC_CORRECTED },
        { "link-down", QV_FPGA_FAULT_LINK_DOWN }, { "throttle", QV_FPGA_FAULT_THROTTLE },
        { "clear", QV_FPGA_FAULT_CLEAR },
    };
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        if (strcmp(what, faults[i].n))
            continue;
        if (factor)
            wr32(QV_FPGA_REG_THROTTLE_FACTOR, factor);
        wr32(QV_FPGA_REG_FAULT_INJECT, faults[i].f);
        if (wait_zero(QV_FPGA_REG_FAULT_INJECT, ~0u, 2000)) {
            fprintf(stderr, "qv-fpga-ctl: card %s did not take the fault within 2 s (is "
                    "qv-fpga-sim running?)\n", name);
            return 1;
        }
        printf("card %s: %s applied\n", name, what);
        return 0;
    }
    fprintf(stderr, "qv-fpga-ctl: inject %s: expected hang, ecc, ecc-corrected, link-down, "
            "throttle or clear\n", what);
    return 2;
}

static int cmd_reset(const char *name)
{
    wr32(QV_FPGA_REG_CTRL, rd32(QV_FPGA_REG_CTRL) | QV_FPGA_CTRL_RESET);
    if (wait_zero(QV_FPGA_REG_CTRL, QV_FPGA_CTRL_RESET, 5000)) {
        fprintf(stderr, "qv-fpga-ctl: card %s did not finish its reset within 5 s\n", name);
        return 1;
    }
    printf("card %s: reset done\n", name);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: qv-fpga-ctl --name NAME COMMAND\n"
               "  status                      registers in human form\n"
               "  errlog                      the error log, decoded\n"
               "  inject hang|ecc|ecc-corrected|link-down|throttle [--factor N]|clear\n"
               "  clear                       end injected faults\n"
               "  reset                       reset the card (CTRL.RESET)\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "name", required_argument, NULL, 'n' },
        { "factor", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *name = NULL;
    unsigned factor = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': name = optarg; break;
        case 'f': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*end || v < 1 || v > 1000000) {
                fprintf(stderr, "qv-fpga-ctl: --factor %s: expected an integer >= 1\n",
                        optarg);
                return 2;
            }
            factor = (unsigned)v;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!name || optind >= argc) {
        fprintf(stderr, "qv-fpga-ctl: %s\n", !name ? "--name NAME is required"
                                                   : "a command is required");
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    char path[128];
    snprintf(path, sizeof path, "%s%s", QV_FPGA_SHM_PREFIX, name);
    int fd = shm_open(path, O_RDWR, 0);
    if (fd < 0) {
        if (errno == ENOENT)
            fprintf(stderr, "qv-fpga-ctl: no card named %s: /dev/shm%s does not exist; start "
                    "qv-fpga-sim --name %s\n", name, path, name);
        else
            fprintf(stderr, "qv-fpga-ctl: /dev/shm%s: %s\n", path, strerror(errno));
        return 1;
    }
    void *p = mmap(NULL, QV_FPGA_BAR0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        fprintf(stderr, "qv-fpga-ctl: mmap /dev/shm%s: %s\n", path, strerror(errno));
        return 1;
    }
    bar = p;
    int rc;
    if (rd32(QV_FPGA_REG_MAGIC) != QV_FPGA_MAGIC) {
        fprintf(stderr, "qv-fpga-ctl: /dev/shm%s holds no started card (MAGIC 0x%08x)\n",
                path, rd32(QV_FPGA_REG_MAGIC));
        rc = 1;
    } else if (!strcmp(cmd, "status")) {
        rc = cmd_status(name);
    } else if (!strcmp(cmd, "errlog")) {
        rc = cmd_errlog();
    } else if (!strcmp(cmd, "inject") && optind + 1 < argc) {
        rc = cmd_inject(name, argv[optind + 1], factor);
    } else if (!strcmp(cmd, "clear")) {
        rc = cmd_inject(name, "clear", 0);
    } else if (!strcmp(cmd, "reset")) {
        rc = cmd_reset(name);
    } else {
        fprintf(stderr, "qv-fpga-ctl: unknown command '%s'%s\n", cmd,
                !strcmp(cmd, "inject") ? " (inject what?)" : "");
        usage(stderr);
        rc = 2;
    }
    munmap(p, QV_FPGA_BAR0_SIZE);
    return rc;
}
