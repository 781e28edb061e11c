/*
 * sim_main.c - qv-fpga-sim: the simulated FPGA card as a process.
 *
 * Creates a process-mode card (BAR0 = /dev/shm/quiver-fpga-<name>) and runs
 * its loop until SIGTERM or SIGINT, then unlinks the shm and exits 0.  The
 * host driver maps the window, writes SIM_HOST_PID and talks to the card
 * as docs/REGISTERS.md says.  Options override the [fpga] section of
 * --conf.  See `qv-fpga-sim -h`.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fpga_sim.h"
#include "quiver/config.h"
#include "quiver/errors.h"

static volatile int stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qv-fpga-sim [--name NAME] [--conf FILE] [--hbm BYTES] [--no-opencl] "
            "[--pace]\n"
            "  Run a simulated Quiver FPGA card; BAR0 is /dev/shm%sNAME.\n"
            "  --name NAME   card name (default: [fpga] name, else \"0\")\n"
            "  --conf FILE   read the [fpga] section of FILE (conf/quiver.conf)\n"
            "  --hbm BYTES   device memory, with K/M/G suffix (default 16G)\n"
            "  --no-opencl   run scans on the CPU engine, not the OpenCL bitstream\n"
            "  --pace        complete no earlier than the modelled device time\n"
            "  -h, --help    this text\n"
            "  SIGTERM / SIGINT stop the card and remove its shm object.\n",
            QV_FPGA_SHM_PREFIX);
}

/* "16G", "512M", "4096" -> bytes; 0 on a bad value. */
static uint64_t parse_bytes(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return 0;
    int shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10;
    else if (*end == 'M' || *end == 'm')
        shift = 20;
    else if (*end == 'G' || *end == 'g')
        shift = 30;
    else if (*end == 'T' || *end == 't')
        shift = 40;
    else if (*end)
        return 0;
    if (shift && end[1])
        return 0;
    if (v > (UINT64_MAX >> shift))
        return 0;
    return (uint64_t)v << shift;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "name", required_argument, NULL, 'n' },
        { "conf", required_argument, NULL, 'c' },
        { "hbm", required_argument, NULL, 'm' },
        { "no-opencl", no_argument, NULL, 'O' },
        { "pace", no_argument, NULL, 'p' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *name = NULL, *conf = NULL, *hbm = NULL;
    int no_opencl = 0, pace = 0, c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': name = optarg; break;
        case 'c': conf = optarg; break;
        case 'm': hbm = optarg; break;
        case 'O': no_opencl = 1; break;
        case 'p': pace = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "qv-fpga-sim: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    struct qv_fpga_sim_opts o;
    qv_fpga_sim_opts_default(&o);
    struct qv_config *cfg = NULL;
    if (conf) {
        cfg = qv_config_load(conf);
        if (!cfg) {
            fprintf(stderr, "qv-fpga-sim: %s\n", qv_errmsg());
            return 1;
        }
        qv_fpga_sim_opts_from_config(cfg, &o);
    }
    if (name)
        o.name = name;
    if (hbm && !(o.hbm_bytes = parse_bytes(hbm))) {
        fprintf(stderr, "qv-fpga-sim: --hbm %s: expected bytes with an optional K/M/G/T "
                "suffix, e.g. 16G\n", hbm);
        qv_config_free(cfg);
        return 2;
    }
    if (no_opencl)
        o.use_opencl = 0;
    if (pace)
        o.pace = 1;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct qv_fpga_sim *s = qv_fpga_sim_create(&o, QV_FPGA_SIM_PROCESS);
    if (!s) {
        fprintf(stderr, "qv-fpga-sim: %s\n", qv_errmsg());
        qv_config_free(cfg);
        return 1;
    }
    fprintf(stderr, "qv-fpga-sim: card %s ready (BAR0 /dev/shm%s%s)\n", o.name,
            QV_FPGA_SHM_PREFIX, o.name);
    int rc = qv_fpga_sim_run(s, &stop_flag);
    qv_fpga_sim_free(s);
    qv_config_free(cfg);
    if (rc) {
        fprintf(stderr, "qv-fpga-sim: %s\n", qv_errmsg());
        return 1;
    }
    fprintf(stderr, "qv-fpga-sim: card %s stopped\n", o.name);
    return 0;
}
