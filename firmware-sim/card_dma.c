/*
 * card_dma.c - the simulated card's DMA engine: ATU (region) checks and
 * transfers to and from host memory.  Design: card_int.h, "DMA AND THE
 * ATU".  Called only from the loop thread.  Cost: O(ATU entries) per check
 * plus the copy.
 */
#include <errno.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "card_int.h"

int qv__card_dma_check(struct qv_fpga_sim *s, uint64_t addr, uint64_t len,
                       uint32_t need, uint64_t align)
{
    if (len == 0)
        return 0;
    if (addr == QV_FPGA_ADDR_NONE || (addr & (align - 1)) != 0) {
        s->cur.bad_addr = addr;
        return QV_FPGA_ST_BAD_ADDRESS;
    }
    for (uint32_t i = 0; i < QV_FPGA_ATU_ENTRIES; i++) {
        uint32_t e = QV_FPGA_ATU_ENTRY(i);
        uint32_t flags = bar_rd32(s, e + (uint32_t)offsetof(struct qv_fpga_atu_entry, flags));
        if (!(flags & QV_FPGA_ATU_VALID) || (flags & need) != need)
            continue;
        uint64_t base = bar_rd64(s, e + (uint32_t)offsetof(struct qv_fpga_atu_entry, base));
        uint64_t elen = bar_rd64(s, e + (uint32_t)offsetof(struct qv_fpga_atu_entry, len));
        /* overflow-safe: never forms addr + len */
        if (addr >= base && len <= elen && addr - base <= elen - len)
            return 0;
    }
    s->cur.bad_addr = addr;
    return QV_FPGA_ST_BAD_ADDRESS;
}

/* Process mode: one transfer, looping over partial ones.  0 or -1. */
static int vm_xfer(struct qv_fpga_sim *s, void *local, uint64_t remote, uint64_t len,
                   int write)
{
    pid_t pid = (pid_t)bar_rd32(s, QV_FPGA_REG_SIM_HOST_PID);
    if (pid <= 0)
        return -1;
    uint64_t done = 0;
    while (done < len) {
        struct iovec l = { .iov_base = (uint8_t *)local + done, .iov_len = len - done };
        struct iovec r = { .iov_base = (void *)(uintptr_t)(remote + done),
                           .iov_len = len - done };
        ssize_t n = write ? process_vm_writev(pid, &l, 1, &r, 1, 0)
                          : process_vm_readv(pid, &l, 1, &r, 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        done += (uint64_t)n;
    }
    return 0;
}

/* Bytes per step of a long transfer: between steps the heartbeat moves,
 * as a real card's firmware keeps ticking while its DMA engine streams a
 * block (a 512 MB UPLOAD copied in one piece stopped HEARTBEAT for ~0.5 s
 * and tripped the host's watchdog). */
#define CARD_DMA_STEP (4u << 20)

int qv__card_dma_read(struct qv_fpga_sim *s, void *dst, uint64_t addr, uint64_t len,
                      uint64_t align)
{
    int st = qv__card_dma_check(s, addr, len, QV_FPGA_ATU_READ, align);
    if (st || len == 0)
        return st;
    for (uint64_t off = 0; off < len; off += CARD_DMA_STEP) {
        uint64_t n = len - off < CARD_DMA_STEP ? len - off : CARD_DMA_STEP;
        if (s->mode == QV_FPGA_SIM_PROCESS) {
            if (vm_xfer(s, (char *)dst + off, addr + off, n, 0)) {
                s->cur.bad_addr = addr + off;
                return QV_FPGA_ST_BAD_ADDRESS;
            }
        } else {
            memcpy((char *)dst + off, (const void *)(uintptr_t)(addr + off), n);
        }
        if (off + n < len)
            bar_add64(s, QV_FPGA_REG_HEARTBEAT, s->hang ? 0 : 1);
    }
    s->cur.pcie_bytes += len;
    bar_add64(s, QV_FPGA_REG_DMA_READ_BYTES, len);
    return 0;
}

int qv__card_dma_write(struct qv_fpga_sim *s, uint64_t addr, const void *src, uint64_t len,
                       uint64_t align)
{
    int st = qv__card_dma_check(s, addr, len, QV_FPGA_ATU_WRITE, align);
    if (st || len == 0)
        return st;
    if (s->mode == QV_FPGA_SIM_PROCESS) {
        if (vm_xfer(s, (void *)src, addr, len, 1)) {
            s->cur.bad_addr = addr;
            return QV_FPGA_ST_BAD_ADDRESS;
        }
    } else {
        memcpy((void *)(uintptr_t)addr, src, len);
    }
    s->cur.pcie_bytes += len;
    bar_add64(s, QV_FPGA_REG_DMA_WRITE_BYTES, len);
    return 0;
}

int qv__card_dma_write_cpl(struct qv_fpga_sim *s, uint64_t addr, const struct qv_fpga_cpl *c)
{
    const uint64_t body = offsetof(struct qv_fpga_cpl, seq);
    int st = qv__card_dma_check(s, addr, QV_FPGA_CPL_SIZE, QV_FPGA_ATU_WRITE, 32);
    if (st)
        return st;
    if (s->mode == QV_FPGA_SIM_PROCESS) {
        uint32_t seq = c->seq;
        if (vm_xfer(s, (void *)c, addr, body, 1) || vm_xfer(s, &seq, addr + body, 4, 1)) {
            s->cur.bad_addr = addr;
            return QV_FPGA_ST_BAD_ADDRESS;
        }
    } else {
        memcpy((void *)(uintptr_t)addr, c, body);
        __atomic_store_n((uint32_t *)(uintptr_t)(addr + body), c->seq, __ATOMIC_RELEASE);
    }
    bar_add64(s, QV_FPGA_REG_DMA_WRITE_BYTES, QV_FPGA_CPL_SIZE);
    return 0;
}
