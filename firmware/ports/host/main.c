/* The firmware on a Linux host: its two ports as pseudo-terminals published at symlinks
 * (as umbra-board does), or as existing serial devices (a USB-serial cable to a real node).
 * Used to test the C firmware against umbra-hil conformance without an emulator.
 *
 *   umbra-fw-host --link /tmp/b.tty --hil /tmp/b-hil.tty [--gpus 8] [--rate 10]
 *   umbra-fw-host --link-dev /dev/ttyUSB0 --hil-dev /dev/ttyUSB1
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "umb_board.h"

static int fds[2] = {-1, -1};
static int slaves[2] = {-1, -1};
static const char *links[2];
static volatile sig_atomic_t stop;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void write_port(void *ctx, int port, const uint8_t *data, size_t n)
{
    (void)ctx;
    while (n > 0) {
        ssize_t k = write(fds[port], data, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return; /* best effort: a full or closed line loses the frame, as a UART would */
        }
        data += k;
        n -= (size_t)k;
    }
}

static void raw(int fd)
{
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        cfsetspeed(&t, B115200);
        tcsetattr(fd, TCSANOW, &t);
    }
}

static int publish_pty(int port, const char *path)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0) return -1;
    const char *name = ptsname(m);
    int s = open(name, O_RDWR | O_NOCTTY);
    if (s < 0) return -1;
    raw(s);
    slaves[port] = s; /* held open: the master never sees EIO when a peer closes */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    unlink(tmp);
    if (symlink(name, tmp) < 0 || rename(tmp, path) < 0) {
        fprintf(stderr, "umbra-fw-host: cannot publish %s: %s\n", path, strerror(errno));
        return -1;
    }
    fcntl(m, F_SETFL, fcntl(m, F_GETFL) | O_NONBLOCK);
    links[port] = path;
    return m;
}

static int open_device(const char *path)
{
    int fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        fprintf(stderr, "umbra-fw-host: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    raw(fd);
    return fd;
}

static void on_signal(int sig) { (void)sig; stop = 1; }

static umb_board board;

int main(int argc, char **argv)
{
    umb_board_config cfg;
    umb_board_config_defaults(&cfg);
    const char *path[2] = {NULL, NULL};
    bool device[2] = {false, false};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "umbra-fw-host: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--link")) path[0] = v;
        else if (!strcmp(a, "--hil")) path[1] = v;
        else if (!strcmp(a, "--link-dev")) path[0] = v, device[0] = true;
        else if (!strcmp(a, "--hil-dev")) path[1] = v, device[1] = true;
        else if (!strcmp(a, "--gpus")) cfg.gpu_count = (uint32_t)atoi(v);
        else if (!strcmp(a, "--rate")) cfg.sensor_rate_hz = atof(v);
        else if (!strcmp(a, "--board-id")) snprintf(cfg.board_id, sizeof cfg.board_id, "%s", v);
        else { fprintf(stderr, "umbra-fw-host: unknown option %s\n", a); return 2; }
        i++;
    }
    if (!path[0] || !path[1]) {
        fprintf(stderr, "usage: umbra-fw-host --link PATH|--link-dev DEV --hil PATH|--hil-dev DEV [--gpus N] [--rate HZ]\n");
        return 2;
    }
    if (cfg.gpu_count < 1 || cfg.gpu_count > UMB_BOARD_MAX_GPUS || !(cfg.sensor_rate_hz >= 0.01 && cfg.sensor_rate_hz <= 1000)) {
        fprintf(stderr, "umbra-fw-host: --gpus 1…%u, --rate 0.01…1000\n", UMB_BOARD_MAX_GPUS);
        return 2;
    }
    for (int p = 0; p < 2; p++) {
        fds[p] = device[p] ? open_device(path[p]) : publish_pty(p, path[p]);
        if (fds[p] < 0) return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    umb_board_init(&board, &cfg, write_port, NULL, now_us());
    printf("umbra-fw-host: board %s, %u GPUs, on %s (HIL on %s)\n", cfg.board_id, cfg.gpu_count, path[0], path[1]);
    fflush(stdout);
    uint8_t buf[512];
    while (!stop) {
        struct pollfd pfd[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
        poll(pfd, 2, 1);
        for (int p = 0; p < 2; p++) {
            if (!(pfd[p].revents & POLLIN)) continue;
            ssize_t n = read(fds[p], buf, sizeof buf);
            if (n > 0) umb_board_rx(&board, p, buf, (size_t)n, now_us());
        }
        umb_board_poll(&board, now_us());
    }
    for (int p = 0; p < 2; p++)
        if (links[p]) unlink(links[p]);
    return 0;
}
