/*
 * rr-bench: request/response latency and stream throughput over TCP, for
 * benchmarks that run a client and a server in network namespaces.
 *
 *   rr-bench echo ADDRESS PORT                  serve: echo every byte back
 *   rr-bench rr ADDRESS PORT RATE SECONDS SIZE  requests of SIZE bytes at RATE
 *                                               per second (open loop: sent on
 *                                               schedule whether or not earlier
 *                                               answers came); prints
 *                                               "requests N p50_us X p99_us Y"
 *   rr-bench source ADDRESS PORT MEGABYTES      serve: send MEGABYTES MiB, close
 *                                               (the same bytes every time, so two
 *                                               replicas send identical streams)
 *   rr-bench drain ADDRESS PORT                 read until the end; prints
 *                                               "bytes N seconds S mbit_per_s R"
 *
 * Latency of a request is measured from its scheduled send time to the end
 * of its answer, so a stalled path shows as latency, not as fewer requests.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <poll.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static struct sockaddr_in address(const char *host, const char *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", host);
        exit(1);
    }
    return a;
}

static int serve_one(const char *host, const char *port)
{
    struct sockaddr_in a = address(host, port);
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0 || listen(listener, 1) < 0)
        die("bind/listen");
    printf("ready\n");
    fflush(stdout);
    int conn = accept(listener, NULL, NULL);
    if (conn < 0)
        die("accept");
    setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    close(listener);
    return conn;
}

static int connect_to(const char *host, const char *port)
{
    struct sockaddr_in a = address(host, port);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect");
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

static int compare(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    static char buffer[1 << 16];
    if (argc == 4 && !strcmp(argv[1], "echo")) {
        int conn = serve_one(argv[2], argv[3]);
        for (;;) {
            ssize_t n = read(conn, buffer, sizeof buffer);
            if (n <= 0)
                return 0;
            if (write(conn, buffer, (size_t)n) != n)
                return 0;
        }
    }
    if (argc == 5 && !strcmp(argv[1], "source")) {
        int conn = serve_one(argv[2], argv[3]);
        uint64_t remaining = (uint64_t)atoll(argv[4]) << 20;
        memset(buffer, 's', sizeof buffer);
        while (remaining > 0) {
            size_t chunk = remaining < sizeof buffer ? (size_t)remaining : sizeof buffer;
            ssize_t n = write(conn, buffer, chunk);
            if (n <= 0)
                die("write");
            remaining -= (uint64_t)n;
        }
        close(conn);
        return 0;
    }
    if (argc == 7 && !strcmp(argv[1], "rr")) {
        int s = connect_to(argv[2], argv[3]);
        double rate = atof(argv[4]), seconds = atof(argv[5]);
        size_t size = (size_t)atoi(argv[6]);
        size_t count = (size_t)(rate * seconds);
        uint64_t interval = (uint64_t)(1e9 / rate), start = now_ns() + 10000000;
        uint64_t *latency = calloc(count, sizeof *latency);
        size_t sent = 0, answered = 0, received = 0;
        memset(buffer, 'r', size);
        while (answered < count) {
            uint64_t now = now_ns();
            while (sent < count && start + sent * interval <= now) {
                if (write(s, buffer, size) != (ssize_t)size)
                    die("write");
                sent++;
            }
            /* Wait for answers until the next send is due (ppoll: exact to
             * the microsecond, where SO_RCVTIMEO rounds up to a jiffy). */
            uint64_t next = sent < count ? start + sent * interval : now + 1000000000u;
            struct timespec wait = {0, 0};
            if (next > now) {
                wait.tv_sec = (time_t)((next - now) / 1000000000u);
                wait.tv_nsec = (long)((next - now) % 1000000000u);
            }
            struct pollfd entry = {.fd = s, .events = POLLIN};
            if (ppoll(&entry, 1, &wait, NULL) <= 0)
                continue;
            ssize_t n = read(s, buffer + size, sizeof buffer - size);
            if (n == 0)
                die("closed");
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                die("read");
            }
            received += (size_t)n;
            uint64_t done = now_ns();
            while (answered < sent && received >= (answered + 1) * size) {
                latency[answered] = done - (start + answered * interval);
                answered++;
            }
        }
        qsort(latency, count, sizeof *latency, compare);
        printf("requests %zu p50_us %.1f p99_us %.1f\n", count, latency[count / 2] / 1e3,
               latency[count * 99 / 100] / 1e3);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "drain")) {
        int s = connect_to(argv[2], argv[3]);
        uint64_t start = now_ns(), bytes = 0;
        ssize_t n;
        while ((n = read(s, buffer, sizeof buffer)) > 0)
            bytes += (uint64_t)n;
        double elapsed = (now_ns() - start) / 1e9;
        printf("bytes %llu seconds %.3f mbit_per_s %.1f\n", (unsigned long long)bytes, elapsed,
               bytes * 8 / elapsed / 1e6);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of rr-bench.c\n");
    return 1;
}
