/*
 * tap-forwarder: moves Ethernet frames between a tap device and a
 * SOCK_SEQPACKET socket, one frame per datagram and no header in either
 * direction. Tests use it to stand a network namespace's kernel stack in
 * for a guest, or to give a VM's NIC a network: the namespace's tap on one
 * side, and on the other the frame socket a daemon is handed (proxyd's
 * guest side, vmmd's virtio-net backend).
 *
 *   tap-forwarder TAPNAME FD [--stats-fd M] [--switch-fd K]
 *
 * Run it inside the tap's namespace (ip netns exec): a tap is attached by
 * name within the caller's namespace. FD is an inherited SEQPACKET socket.
 * Prints "ready\n" on stdout once attached; exits 0 when the socket's peer
 * closes, 1 on any error (with a message on stderr).
 *
 * --stats-fd M: on exit, writes "frames_in=A frames_out=B busy_us=C" to M
 * (A frames tap -> socket, B socket -> tap, C microseconds spent moving
 * them rather than waiting), so a test can show the forwarder is not what
 * limits throughput.
 *
 * --switch-fd K: K is a SEQPACKET socket; each datagram arriving there
 * carries a new frame socket (SCM_RIGHTS) that replaces the current one (a
 * VM migrating to another vmmd takes the tap along). The forwarder then
 * runs until K closes, not the frame socket; frames from the tap while no
 * frame socket is connected are dropped, as a wire would.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAX 65536
/* Frames moved per direction before polling again, so that neither
 * direction starves the other under load. */
#define BATCH 64

static int stats_fd = -1;
static unsigned long long frames_in, frames_out, busy_ns;

static unsigned long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

static void finish(int status)
{
    if (stats_fd >= 0) {
        char line[128];
        int n = snprintf(line, sizeof line, "frames_in=%llu frames_out=%llu busy_us=%llu\n",
                         frames_in, frames_out, busy_ns / 1000);
        if (write(stats_fd, line, (size_t)n) < 0)
            perror("write stats");
    }
    exit(status);
}

static int open_tap(const char *name)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        perror("open /dev/net/tun");
        exit(1);
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        fprintf(stderr, "TUNSETIFF %s: %s\n", name, strerror(errno));
        exit(1);
    }
    return fd;
}

static int require_seqpacket(int fd, const char *what)
{
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_SEQPACKET) {
        fprintf(stderr, "%s (fd %d) is not a SOCK_SEQPACKET socket\n", what, fd);
        exit(1);
    }
    return fd;
}

/* The frame socket's peer is gone: the end, unless a switch socket will
 * bring the next one. */
static void socket_gone(int *sock, int switching)
{
    if (!switching)
        finish(0);
    close(*sock);
    *sock = -1;
}

/* Tap -> socket. A full socket blocks us (the reader is slow); the tap
 * then queues or drops as a NIC would. */
static void tap_to_socket(int tap, int *sock, int switching, unsigned char *buf)
{
    for (int i = 0; i < BATCH; i++) {
        ssize_t n = read(tap, buf, FRAME_MAX);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            perror("read tap");
            finish(1);
        }
        if (*sock < 0)
            continue;
        if (send(*sock, buf, (size_t)n, MSG_NOSIGNAL) < 0) {
            if (errno == EPIPE || errno == ECONNRESET) {
                socket_gone(sock, switching);
            } else if (errno != EINTR) {
                perror("send socket");
                finish(1);
            }
            continue;
        }
        frames_in++;
    }
}

static void socket_to_tap(int *sock, int tap, int switching, unsigned char *buf)
{
    for (int i = 0; i < BATCH && *sock >= 0; i++) {
        ssize_t n = recv(*sock, buf, FRAME_MAX, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            socket_gone(sock, switching);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            perror("recv socket");
            finish(1);
        }
        /* A tap write never blocks; a frame the kernel refuses (too short,
         * too long) is the sender's problem, not a reason to stop. */
        if (write(tap, buf, (size_t)n) < 0 && errno != EINVAL && errno != EINTR) {
            perror("write tap");
            finish(1);
        }
        frames_out++;
    }
}

/* A datagram on the switch socket: the next frame socket, or the end. */
static void take_switch(int switch_fd, int *sock)
{
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control};
    ssize_t n = recvmsg(switch_fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR)
        return;
    struct cmsghdr *header = CMSG_FIRSTHDR(&msg);
    if (n <= 0 || header == NULL || header->cmsg_type != SCM_RIGHTS)
        finish(0);
    if (*sock >= 0)
        close(*sock);
    memcpy(sock, CMSG_DATA(header), sizeof(int));
    require_seqpacket(*sock, "the switched-to socket");
}

static int parse_fd(const char *text)
{
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value < 0 || value > 1 << 20) {
        fprintf(stderr, "not an fd: %s\n", text);
        exit(1);
    }
    return (int)value;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc % 2 == 0) {
        fprintf(stderr, "usage: %s TAPNAME FD [--stats-fd M] [--switch-fd K]\n", argv[0]);
        return 1;
    }
    int switch_fd = -1;
    for (int i = 3; i < argc; i += 2) {
        if (strcmp(argv[i], "--stats-fd") == 0) {
            stats_fd = parse_fd(argv[i + 1]);
        } else if (strcmp(argv[i], "--switch-fd") == 0) {
            switch_fd = require_seqpacket(parse_fd(argv[i + 1]), "--switch-fd");
        } else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 1;
        }
    }
    int tap = open_tap(argv[1]);
    int sock = require_seqpacket(parse_fd(argv[2]), "FD");
    int switching = switch_fd >= 0;
    static unsigned char buf[FRAME_MAX];
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        struct pollfd fds[3] = {
            {.fd = tap, .events = POLLIN},
            {.fd = sock, .events = POLLIN},     /* ignored while sock is -1 */
            {.fd = switch_fd, .events = POLLIN},
        };
        if (poll(fds, switching ? 3 : 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            finish(1);
        }
        unsigned long long start = now_ns();
        if (fds[0].revents & POLLIN)
            tap_to_socket(tap, &sock, switching, buf);
        if (sock >= 0 && fds[1].revents & (POLLIN | POLLHUP | POLLERR))
            socket_to_tap(&sock, tap, switching, buf);
        if (switching && fds[2].revents & (POLLIN | POLLHUP | POLLERR))
            take_switch(switch_fd, &sock);
        busy_ns += now_ns() - start;
    }
}
