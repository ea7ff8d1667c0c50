/*
 * colo-status: ask one COLO daemon for its status over its control socket.
 *
 * Why this exists: the daemons are Swift, and their wire protocol must not be
 * a Swift artefact. This client is written against nothing but the .proto
 * files (compiled with protoc-c at build time) and the wire rule of
 * Proto/colo/control/common.proto: one SOCK_SEQPACKET datagram carries one
 * serialized colo.control.Request or colo.control.Response. If it can talk
 * to every daemon, the protocol is language-neutral.
 *
 * Usage: colo-status [--json] [--host] [--id N] [--timeout MS] SOCKET
 *   --host   send a HostStatusRequest (supervisord) instead of a StatusRequest
 * Exit: 0 status received, 1 the daemon answered with an Error (including a
 *       refusal with id 0), 2 transport or protocol failure.
 */
#define _GNU_SOURCE
#include "colo/control/envelope.pb-c.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { EXIT_STATUS_OK = 0, EXIT_ERROR_REPLY = 1, EXIT_TRANSPORT = 2 };

/* Largest datagram we accept. Status replies are a few hundred bytes; a
 * HostStatus carries five of them. 64 KiB leaves room and lets us detect a
 * truncated datagram (MSG_TRUNC) instead of decoding half a message. */
#define MAX_DATAGRAM 65536

struct options {
    const char *socket_path;
    bool json;
    bool host;
    uint64_t id;
    int timeout_ms;
};

/* Print a usage line and exit 2: a bad command line is a failure to talk to
 * the daemon at all, never to be confused with the daemon's own error. */
static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--json] [--host] [--id N] [--timeout MS] SOCKET\n", argv0);
    exit(EXIT_TRANSPORT);
}

/* Parse the command line by hand: four options do not justify getopt_long's
 * global state, and this keeps the accepted forms obvious. */
static struct options parse_options(int argc, char **argv)
{
    /* A default id that differs between runs: a reply that merely echoes a
     * stale constant would otherwise look right. Never 0 (reserved for the
     * daemon's "closing your connection" message). */
    struct options o = { .id = (uint64_t)getpid() * 1000u + 7u, .timeout_ms = 5000 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else if (strcmp(a, "--host") == 0) {
            o.host = true;
        } else if (strcmp(a, "--id") == 0 && i + 1 < argc) {
            char *end;
            o.id = strtoull(argv[++i], &end, 10);
            if (*end != '\0' || o.id == 0) usage(argv[0]);
        } else if (strcmp(a, "--timeout") == 0 && i + 1 < argc) {
            char *end;
            long ms = strtol(argv[++i], &end, 10);
            if (*end != '\0' || ms <= 0 || ms > 3600000) usage(argv[0]);
            o.timeout_ms = (int)ms;
        } else if (a[0] == '-' && a[1] != '\0') {
            usage(argv[0]);
        } else if (o.socket_path == NULL) {
            o.socket_path = a;
        } else {
            usage(argv[0]);
        }
    }
    if (o.socket_path == NULL) usage(argv[0]);
    return o;
}

/* Report a transport failure (with errno text when there is one) and exit 2;
 * every path that cannot get a decodable reply ends here. */
static void fail_transport(const char *what, int err)
{
    if (err != 0)
        fprintf(stderr, "colo-status: %s: %s\n", what, strerror(err));
    else
        fprintf(stderr, "colo-status: %s\n", what);
    exit(EXIT_TRANSPORT);
}

/* Connect a SOCK_SEQPACKET socket to the daemon. SEQPACKET (not STREAM) is
 * the protocol: message boundaries are the framing, there is no length
 * prefix. CLOEXEC because nothing we exec should inherit it. */
static int connect_control_socket(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(addr.sun_path)) fail_transport("socket path too long", 0);
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_transport("socket", errno);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) fail_transport(path, errno);
    return fd;
}

/* Serialize a Request {id, status|host_status} and send it as one datagram.
 * fd_count stays 0: a status request carries no descriptors. Returns 0, or
 * the errno of a send that failed because the daemon already closed the
 * connection: a daemon refusing our uid sends its id-0 error and hangs up
 * at once, and that error is still waiting in our receive queue. */
static int send_request(int fd, const struct options *o)
{
    Colo__Control__Request req = COLO__CONTROL__REQUEST__INIT;
    Colo__Control__StatusRequest status = COLO__CONTROL__STATUS_REQUEST__INIT;
    Colo__Control__HostStatusRequest host = COLO__CONTROL__HOST_STATUS_REQUEST__INIT;
    req.id = o->id;
    if (o->host) {
        req.body_case = COLO__CONTROL__REQUEST__BODY_HOST_STATUS;
        req.host_status = &host;
    } else {
        req.body_case = COLO__CONTROL__REQUEST__BODY_STATUS;
        req.status = &status;
    }
    size_t len = colo__control__request__get_packed_size(&req);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL) fail_transport("out of memory", 0);
    colo__control__request__pack(&req, buf);
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    int err = n < 0 ? errno : 0;
    free(buf);
    if (err == EPIPE || err == ECONNRESET) return err;
    if (err != 0) fail_transport("send", err);
    if ((size_t)n != len) fail_transport("short send of a datagram", 0);
    return 0;
}

/* Close every fd that arrived as SCM_RIGHTS. A status reply carries none; a
 * daemon that sent some anyway must not make us leak descriptors (the same
 * rule the daemons follow for fds beyond fd_count). */
static void close_received_fds(struct msghdr *msg)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) close(fds[i]);
    }
}

/* Wait (bounded by the timeout) for one datagram and return its length in
 * *len. A daemon that never answers must not hang a test or a script, and a
 * datagram larger than our buffer is a protocol failure, not a partial read. */
static uint8_t *receive_datagram(int fd, int timeout_ms, int send_err, size_t *len)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r;
    do {
        r = poll(&p, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r < 0) fail_transport("poll", errno);
    if (r == 0) fail_transport("timed out waiting for the reply", 0);

    uint8_t *buf = malloc(MAX_DATAGRAM);
    if (buf == NULL) fail_transport("out of memory", 0);
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * 16)];
    } control;
    struct iovec iov = { .iov_base = buf, .iov_len = MAX_DATAGRAM };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                          .msg_controllen = sizeof(control.space) };
    ssize_t n;
    do {
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    /* A daemon that refuses us sends its id-0 error and closes while our
     * request is still unread in its queue; the kernel then flags
     * ECONNRESET on our socket, and recvmsg reports that flag before the
     * queued datagram. Reading the flag clears it: try once more, without
     * waiting, to get the refusal that explains the reset. */
    if (n < 0 && errno == ECONNRESET) {
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0) errno = ECONNRESET;
    }
    if (n < 0) fail_transport(send_err ? "send" : "recvmsg", send_err ? send_err : errno);
    close_received_fds(&msg);
    if (n == 0)
        fail_transport(send_err ? "the daemon closed the connection before our request"
                                : "the daemon closed the connection without a reply",
                       send_err);
    if (msg.msg_flags & MSG_TRUNC) fail_transport("reply datagram larger than 64 KiB", 0);
    *len = (size_t)n;
    return buf;
}

/* The stable name of an ErrorCode ("ERROR_CODE_PERMISSION_DENIED"), taken
 * from the generated descriptor so the client never keeps its own copy of
 * the enum; unknown (newer) codes print as their number. */
static const char *error_code_name(int code, char *scratch, size_t size)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&colo__control__error_code__descriptor, code);
    if (v != NULL) return v->name;
    snprintf(scratch, size, "%d", code);
    return scratch;
}

/* Write a string as a JSON string literal: the daemon's text (state, error
 * message) is data, so quotes and control characters must be escaped. */
static void json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (*p < 0x20)
                printf("\\u%04x", *p);
            else
                putchar(*p);
        }
    }
    putchar('"');
}

/* Print an Error either as a JSON object or as one readable line; shared by
 * error replies and supervisord's "unreachable" daemon reports. */
static void print_error(const Colo__Control__Error *e, bool json, const char *indent)
{
    char scratch[16];
    int code = e ? (int)e->code : 0;
    const char *msg = e ? e->message : "";
    if (json) {
        printf("{\"code\":");
        json_string(error_code_name(code, scratch, sizeof scratch));
        printf(",\"code_number\":%d,\"message\":", code);
        json_string(msg);
        printf("}");
    } else {
        printf("%serror: %s: %s\n", indent, error_code_name(code, scratch, sizeof scratch), msg);
    }
}

/* Print a DaemonStatus with every field the proto defines, readable or JSON.
 * Missing sub-messages (sandbox) print as defaults, as proto3 means them. */
static void print_status(const Colo__Control__DaemonStatus *s, bool json, const char *indent)
{
    const Colo__Control__SandboxStatus *sb = s->sandbox;
    bool seccomp = sb && sb->seccomp_filter_installed;
    bool nnp = sb && sb->no_new_privileges;
    uint32_t nsys = sb ? sb->allowed_syscall_count : 0;
    uint64_t caps = sb ? sb->effective_capabilities : 0;
    if (json) {
        printf("{\"daemon\":");
        json_string(s->daemon);
        printf(",\"version\":");
        json_string(s->version);
        printf(",\"pid\":%" PRId32 ",\"state\":", s->pid);
        json_string(s->state);
        printf(",\"uptime_ms\":%" PRIu64 ",\"socket_origin\":", s->uptime_ms);
        json_string(s->socket_origin);
        printf(",\"requests_served\":%" PRIu64 ",\"requests_refused\":%" PRIu64, s->requests_served,
               s->requests_refused);
        printf(",\"sandbox\":{\"seccomp_filter_installed\":%s,\"allowed_syscall_count\":%" PRIu32
               ",\"effective_capabilities\":%" PRIu64 ",\"no_new_privileges\":%s}}",
               seccomp ? "true" : "false", nsys, caps, nnp ? "true" : "false");
        return;
    }
    printf("%sdaemon:           %s\n", indent, s->daemon);
    printf("%sversion:          %s\n", indent, s->version);
    printf("%spid:              %" PRId32 "\n", indent, s->pid);
    printf("%sstate:            %s\n", indent, s->state);
    printf("%suptime:           %" PRIu64 " ms\n", indent, s->uptime_ms);
    printf("%ssocket origin:    %s\n", indent, s->socket_origin);
    printf("%srequests served:  %" PRIu64 "\n", indent, s->requests_served);
    printf("%srequests refused: %" PRIu64 "\n", indent, s->requests_refused);
    if (seccomp)
        printf("%sseccomp filter:   installed, %" PRIu32 " syscalls allowed\n", indent, nsys);
    else
        printf("%sseccomp filter:   not installed\n", indent);
    printf("%sno_new_privs:     %s\n", indent, nnp ? "yes" : "no");
    printf("%seffective caps:   0x%" PRIx64 "\n", indent, caps);
}

/* Print supervisord's HostStatus: its own status, then one entry per daemon,
 * each either a status or the reason it could not be reached. */
static void print_host_status(const Colo__Control__HostStatus *h, bool json)
{
    static const Colo__Control__DaemonStatus empty = COLO__CONTROL__DAEMON_STATUS__INIT;
    const Colo__Control__DaemonStatus *sup = h->supervisor ? h->supervisor : &empty;
    if (json) {
        printf("{\"supervisor\":");
        print_status(sup, true, "");
        printf(",\"daemons\":[");
    } else {
        printf("supervisor:\n");
        print_status(sup, false, "  ");
    }
    for (size_t i = 0; i < h->n_daemons; i++) {
        const Colo__Control__DaemonReport *d = h->daemons[i];
        if (json) {
            printf("%s{\"daemon\":", i ? "," : "");
            json_string(d->daemon);
            if (d->outcome_case == COLO__CONTROL__DAEMON_REPORT__OUTCOME_STATUS) {
                printf(",\"status\":");
                print_status(d->status, true, "");
            } else {
                printf(",\"unreachable\":");
                print_error(d->unreachable, true, "");
            }
            printf("}");
        } else {
            printf("%s:\n", d->daemon);
            if (d->outcome_case == COLO__CONTROL__DAEMON_REPORT__OUTCOME_STATUS)
                print_status(d->status, false, "  ");
            else
                print_error(d->unreachable, false, "  unreachable ");
        }
    }
    if (json) printf("]}");
}

/* Decode the reply, check it answers our request, print it and return the
 * exit code. The id check is the protocol's matching rule; id 0 is the
 * daemon telling us why it closes the connection (e.g. our uid is not
 * allowed), which we print as the error it is. */
static int handle_reply(const uint8_t *buf, size_t len, const struct options *o)
{
    Colo__Control__Response *resp = colo__control__response__unpack(NULL, len, buf);
    if (resp == NULL) fail_transport("reply does not decode as colo.control.Response", 0);
    int rc;
    bool refusal = resp->id == 0;
    if (!refusal && resp->id != o->id) {
        fprintf(stderr, "colo-status: reply id %" PRIu64 " does not match request id %" PRIu64 "\n",
                resp->id, o->id);
        colo__control__response__free_unpacked(resp, NULL);
        return EXIT_TRANSPORT;
    }
    if (o->json) printf("{\"id\":%" PRIu64 ",", resp->id);
    switch (resp->body_case) {
    case COLO__CONTROL__RESPONSE__BODY_ERROR:
        if (o->json) {
            printf("\"refused\":%s,\"error\":", refusal ? "true" : "false");
            print_error(resp->error, true, "");
        } else {
            print_error(resp->error, false, refusal ? "refused: " : "");
        }
        rc = EXIT_ERROR_REPLY;
        break;
    case COLO__CONTROL__RESPONSE__BODY_STATUS:
        if (refusal || o->host) goto unexpected;
        if (o->json) printf("\"status\":");
        print_status(resp->status, o->json, "");
        rc = EXIT_STATUS_OK;
        break;
    case COLO__CONTROL__RESPONSE__BODY_HOST_STATUS:
        if (refusal || !o->host) goto unexpected;
        if (o->json) printf("\"host_status\":");
        print_host_status(resp->host_status, o->json);
        rc = EXIT_STATUS_OK;
        break;
    default:
    unexpected:
        if (o->json) printf("\"unexpected_body\":%d}\n", (int)resp->body_case);
        fprintf(stderr, "colo-status: reply id %" PRIu64 " has unexpected body case %d\n", resp->id,
                (int)resp->body_case);
        colo__control__response__free_unpacked(resp, NULL);
        return EXIT_TRANSPORT;
    }
    if (o->json) printf("}\n");
    colo__control__response__free_unpacked(resp, NULL);
    return rc;
}

/* One request, one reply, one exit code: connect, send, receive, report. */
int main(int argc, char **argv)
{
    struct options o = parse_options(argc, argv);
    int fd = connect_control_socket(o.socket_path);
    int send_err = send_request(fd, &o);
    size_t len;
    uint8_t *reply = receive_datagram(fd, o.timeout_ms, send_err, &len);
    int rc = handle_reply(reply, len, &o);
    free(reply);
    close(fd);
    fflush(stdout);
    return rc;
}
