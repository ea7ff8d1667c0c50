/* HTTP on TCP port 80 (README.md, "Network services"). Every request (any
 * method, any path) increments the disk counter: the new value is written to
 * sector 0 and flushed BEFORE the reply is queued, so a client told "count=N"
 * knows N is on disk.
 *
 * Persistent connections: HTTP/1.1 without "Connection: close", and HTTP/1.0
 * with "Connection: keep-alive", stay open after the reply; otherwise the
 * connection is closed after it, as an HTTP/1.0 server does. Requests on one
 * connection, pipelined or not, are taken strictly one at a time in order,
 * and a request is only taken when its whole reply fits in the send buffer:
 * an increment is never left without its queued reply, and a client that
 * does not read its replies is flow-controlled (its input waits in lwIP's
 * pbufs with the receive window not reopened) rather than dropped.
 *
 * Bounds: HTTP_CONNS connections at a time (one more is answered 503
 * "error=busy" and closed, unless a connection has been idle for
 * HTTP_IDLE_EVICT_MS: that one is closed instead, as HTTP lets a server close
 * idle persistent connections); a request head of at most HTTP_HEAD_MAX bytes.
 * Bad requests are answered 400 and closed (http_request.c parses). */
#include "services.h"
#include "counter.h"
#include "console.h"
#include "http_request.h"
#include "lwip/tcp.h"
#include "lwip/sys.h"
#include <stdio.h>
#include <stddef.h>
#include <string.h>

#define HTTP_CONNS          16      /* of lwIP's MEMP_NUM_TCP_PCB (32) */
#define HTTP_HEAD_MAX       2048
#define HTTP_REPLY_MAX      512
#define HTTP_IDLE_EVICT_MS  10000
#define HTTP_POLL_INTERVAL  2       /* lwIP coarse timer ticks (500 ms) */

struct conn {
    struct tcp_pcb *pcb;            /* 0: the slot is free */
    struct pbuf *pending;           /* received, not yet moved into in[] (window not reopened) */
    uint32_t discard;               /* body bytes of the last request still to skip */
    uint32_t last_active_ms;
    uint16_t in_len, out_len;
    uint8_t peer_closed;            /* FIN received: answer what is complete, then close */
    uint8_t close_after;            /* close once out[] is queued */
    char in[HTTP_HEAD_MAX];
    char out[HTTP_REPLY_MAX];
};

static struct conn conns[HTTP_CONNS];
uint64_t http_requests_served;

static void conn_detach(struct conn *c)
{
    tcp_arg(c->pcb, 0);
    tcp_recv(c->pcb, 0);
    tcp_sent(c->pcb, 0);
    tcp_poll(c->pcb, 0, 0);
    tcp_err(c->pcb, 0);
    c->pcb = 0;
}

/* Closes with a FIN after the queued replies. Everything received is first
 * acknowledged to lwIP (tcp_recved), else tcp_close would send a RST and the
 * client could lose the last reply. Returns ERR_ABRT if the pcb had to be
 * aborted. */
static err_t conn_close(struct conn *c)
{
    struct tcp_pcb *pcb = c->pcb;
    if (c->pending) {
        tcp_recved(pcb, c->pending->tot_len);
        pbuf_free(c->pending);
        c->pending = 0;
    }
    conn_detach(c);
    if (tcp_close(pcb) != ERR_OK) {
        tcp_abort(pcb);
        return ERR_ABRT;
    }
    return ERR_OK;
}

static err_t conn_abort(struct conn *c)
{
    struct tcp_pcb *pcb = c->pcb;
    if (c->pending) {
        pbuf_free(c->pending);
        c->pending = 0;
    }
    conn_detach(c);
    tcp_abort(pcb);
    return ERR_ABRT;
}

/* Moves pending input into in[] as far as it fits, reopening the window. */
static void refill(struct conn *c)
{
    while (c->pending && c->in_len < HTTP_HEAD_MAX) {
        u16_t n = c->pending->tot_len;
        if (n > HTTP_HEAD_MAX - c->in_len)
            n = (u16_t)(HTTP_HEAD_MAX - c->in_len);
        pbuf_copy_partial(c->pending, c->in + c->in_len, n, 0);
        c->in_len = (uint16_t)(c->in_len + n);
        c->pending = pbuf_free_header(c->pending, n);
        tcp_recved(c->pcb, n);
    }
}

static void consume(struct conn *c, int n)
{
    memmove(c->in, c->in + n, (size_t)(c->in_len - n));
    c->in_len = (uint16_t)(c->in_len - n);
}

/* Drops the body of the request just answered, from in[] then from pending. */
static void skip_body(struct conn *c)
{
    if (c->discard && c->in_len) {
        int n = c->discard < c->in_len ? (int)c->discard : c->in_len;
        consume(c, n);
        c->discard -= (uint32_t)n;
    }
    while (c->discard && c->pending) {
        u16_t n = c->pending->tot_len;
        if (n > c->discard)
            n = (u16_t)c->discard;
        c->pending = pbuf_free_header(c->pending, n);
        tcp_recved(c->pcb, n);
        c->discard -= n;
    }
}

/* Blank lines before a request line are ignored (RFC 9112 2.2). */
static void skip_blank_lines(struct conn *c)
{
    int i = 0;
    while (i < c->in_len && (c->in[i] == '\n' || (c->in[i] == '\r' && i + 1 < c->in_len && c->in[i + 1] == '\n')))
        i += c->in[i] == '\r' ? 2 : 1;
    if (i)
        consume(c, i);
}

static int reply_fits(struct conn *c)
{
    return tcp_sndbuf(c->pcb) >= HTTP_REPLY_MAX && tcp_sndqueuelen(c->pcb) + 2 <= TCP_SND_QUEUELEN;
}

/* An error reply, then the connection is closed. */
static void reply_error(struct conn *c, int minor, const char *status, const char *text,
                        const char *error)
{
    char body[128];
    int blen = snprintf(body, sizeof body, "%s\nerror=%s\n", text, error);
    c->out_len = (uint16_t)snprintf(c->out, sizeof c->out,
        "HTTP/1.%d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
        minor, status, blen, body);
    c->close_after = 1;
}

static void reply_count(struct conn *c, const struct http_request *req)
{
    int64_t n = counter_increment();
    if (n < 0) {
        reply_error(c, req->minor ? 1 : 0, "503 Service Unavailable", "disk write failed", "io");
        return;
    }
    http_requests_served++;
    char body[256];
    int blen = snprintf(body, sizeof body,
                        "<html><head><title>colo-guest</title></head><body>\n"
                        "<h1>Requests served: %ld</h1>\n<pre>\ncount=%ld\n</pre>\n"
                        "</body></html>\n", n, n);
    c->out_len = (uint16_t)snprintf(c->out, sizeof c->out,
        "HTTP/1.%d 200 OK\r\nContent-Type: text/html\r\n"
        "Content-Length: %d\r\nX-Colo-Count: %ld\r\nConnection: %s\r\n\r\n%s",
        req->minor ? 1 : 0, blen, n, req->keep_alive ? "keep-alive" : "close",
        req->is_head ? "" : body);
    c->close_after = !req->keep_alive;
}

/* Queues out[] (one segment per reply, sent at once). 1: queued; 0: no room
 * yet (the sent or poll callback retries); -1: the pcb was aborted. */
static int flush(struct conn *c)
{
    err_t e = tcp_write(c->pcb, c->out, c->out_len, TCP_WRITE_FLAG_COPY);
    if (e == ERR_MEM)
        return 0;
    if (e != ERR_OK) {
        conn_abort(c);
        return -1;
    }
    c->out_len = 0;
    c->last_active_ms = sys_now();
    tcp_output(c->pcb);
    return 1;
}

/* Answers every complete request that has arrived, in order, as far as the
 * send buffer allows. Called on input, on sent data and on poll. Returns
 * ERR_ABRT if the pcb was aborted (then c is free again). */
static err_t serve(struct conn *c)
{
    for (;;) {
        if (c->out_len) {
            int f = flush(c);
            if (f < 0)
                return ERR_ABRT;
            if (f == 0)
                return ERR_OK;
        }
        if (c->close_after)
            return conn_close(c);
        skip_body(c);
        if (c->discard)
            break;                                  /* more body to come */
        refill(c);
        skip_blank_lines(c);
        int head = http_head_length(c->in, c->in_len);
        if (head < 0 && c->in_len < HTTP_HEAD_MAX)
            break;                                  /* the rest of the head is to come */
        if (!reply_fits(c))
            return ERR_OK;                          /* the sent callback comes back */
        struct http_request req;
        enum http_request_error e = head < 0 ? HTTP_REQUEST_TOO_LARGE
                                             : http_request_parse(c->in, head, &req);
        if (e != HTTP_REQUEST_OK) {
            reply_error(c, 1, "400 Bad Request", http_request_error_text(e), "bad-request");
            continue;
        }
        consume(c, head);
        c->discard = req.content_length;
        reply_count(c, &req);
    }
    if (c->peer_closed)
        return conn_close(c);                       /* nothing complete is left */
    return ERR_OK;
}

/* The callbacks below are only set, with arg, while a conn owns the pcb. */
static err_t http_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err)
{
    struct conn *c = arg;
    if (!p) {
        c->peer_closed = 1;
    } else {
        c->last_active_ms = sys_now();
        if (c->pending)
            pbuf_cat(c->pending, p);
        else
            c->pending = p;
    }
    return serve(c);
}

static err_t http_sent(void *arg, struct tcp_pcb *pcb, u16_t len) { return serve(arg); }

static err_t http_poll(void *arg, struct tcp_pcb *pcb) { return serve(arg); }

static void http_err(void *arg, err_t err)
{
    struct conn *c = arg;                           /* the pcb is already gone */
    if (c->pending)
        pbuf_free(c->pending);
    c->pending = 0;
    c->pcb = 0;
}

/* A free slot, else the one idle longest if idle for HTTP_IDLE_EVICT_MS
 * (closed to make room), else 0. */
static struct conn *conn_slot(void)
{
    struct conn *idlest = 0;
    uint32_t now = sys_now();
    for (int i = 0; i < HTTP_CONNS; i++) {
        struct conn *c = &conns[i];
        if (!c->pcb)
            return c;
        if (c->out_len == 0 && now - c->last_active_ms >= HTTP_IDLE_EVICT_MS &&
            (!idlest || c->last_active_ms - idlest->last_active_ms > 0x80000000u))
            idlest = c;
    }
    if (idlest) {
        kprintf("COLO-GUEST WARN http: closing a connection idle for %ums to make room\n",
                now - idlest->last_active_ms);
        conn_close(idlest);
    }
    return idlest;
}

/* Returns ERR_ABRT if the pcb had to be aborted. */
static err_t refuse(struct tcp_pcb *pcb)
{
    static const char busy[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        "Content-Length: 32\r\nConnection: close\r\n\r\n"
        "too many connections\nerror=busy\n";
    kprintf("COLO-GUEST WARN http: %d connections open, refused one\n", HTTP_CONNS);
    tcp_write(pcb, busy, sizeof busy - 1, 0);
    if (tcp_close(pcb) != ERR_OK) {
        tcp_abort(pcb);
        return ERR_ABRT;
    }
    return ERR_OK;
}

static err_t http_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
    if (err != ERR_OK || !pcb)
        return ERR_VAL;
    struct conn *c = conn_slot();
    if (!c)
        return refuse(pcb);
    memset(c, 0, offsetof(struct conn, in));
    c->pcb = pcb;
    c->last_active_ms = sys_now();
    tcp_nagle_disable(pcb);
    tcp_arg(pcb, c);
    tcp_recv(pcb, http_recv);
    tcp_sent(pcb, http_sent);
    tcp_poll(pcb, http_poll, HTTP_POLL_INTERVAL);
    tcp_err(pcb, http_err);
    return ERR_OK;
}

void http_init(void)
{
    struct tcp_pcb *l = tcp_new();
    if (!l || tcp_bind(l, IP_ADDR_ANY, PORT_HTTP) != ERR_OK || !(l = tcp_listen(l)))
        fatal("cannot listen on TCP port %d", PORT_HTTP);
    tcp_accept(l, http_accept);
}
