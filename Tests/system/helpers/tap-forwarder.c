/*
 * tap-forwarder: moves Ethernet frames between a tap device and a
 * SOCK_SEQPACKET socket, one frame per datagram and no header in either
 * direction. Tests use it to stand a network namespace's kernel stack in
 * for a guest: the namespace's tap on one side, and on the other the frame
 * socket a daemon is handed (proxyd's guest side, vmmd's virtio-net
 * backend).
 *
 *   tap-forwarder TAPNAME FD
 *
 * Run it inside the tap's namespace (ip netns exec): a tap is attached by
 * name within the caller's namespace. FD is an inherited SEQPACKET socket.
 * Prints "ready\n" on stdout once attached; exits 0 when the socket's peer
 * closes, 1 on any error (with a message on stderr).
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
#include <unistd.h>

#define FRAME_MAX 65536
/* Frames moved per direction before polling again, so that neither
 * direction starves the other under load. */
#define BATCH 64

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

/* Tap -> socket. A full socket blocks us (the reader is slow); the tap
 * then queues or drops as a NIC would. */
static void tap_to_socket(int tap, int sock, unsigned char *buf)
{
    for (int i = 0; i < BATCH; i++) {
        ssize_t n = read(tap, buf, FRAME_MAX);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            perror("read tap");
            exit(1);
        }
        if (send(sock, buf, (size_t)n, MSG_NOSIGNAL) < 0 && errno != EINTR) {
            if (errno == EPIPE || errno == ECONNRESET)
                exit(0);
            perror("send socket");
            exit(1);
        }
    }
}

static void socket_to_tap(int sock, int tap, unsigned char *buf)
{
    for (int i = 0; i < BATCH; i++) {
        ssize_t n = recv(sock, buf, FRAME_MAX, MSG_DONTWAIT);
        if (n == 0)
            exit(0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            if (errno == ECONNRESET)
                exit(0);
            perror("recv socket");
            exit(1);
        }
        /* A tap write never blocks; a frame the kernel refuses (too short,
         * too long) is the sender's problem, not a reason to stop. */
        if (write(tap, buf, (size_t)n) < 0 && errno != EINVAL && errno != EINTR) {
            perror("write tap");
            exit(1);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s TAPNAME FD\n", argv[0]);
        return 1;
    }
    int tap = open_tap(argv[1]);
    int sock = atoi(argv[2]);
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_SEQPACKET) {
        fprintf(stderr, "fd %s is not a SOCK_SEQPACKET socket\n", argv[2]);
        return 1;
    }
    static unsigned char buf[FRAME_MAX];
    printf("ready\n");
    fflush(stdout);
    struct pollfd fds[2] = {{.fd = tap, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            return 1;
        }
        if (fds[0].revents & POLLIN)
            tap_to_socket(tap, sock, buf);
        if (fds[1].revents & (POLLIN | POLLHUP | POLLERR))
            socket_to_tap(sock, tap, buf);
    }
}
