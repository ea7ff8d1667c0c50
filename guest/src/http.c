/* A small HTTP/1.0 server on port 80. Every request (any method, any path)
 * increments the disk counter: the new value is written to sector 0 and
 * flushed BEFORE the reply is queued, so a client that got "count=N" knows N
 * is on disk. The body is a tiny HTML page with the value also on a line of
 * its own, "count=N", for tests. One request per connection; we close after
 * the reply (Connection: close). */
#include "services.h"
#include "counter.h"
#include "console.h"
#include "lwip/tcp.h"
#include <stdio.h>
#include <string.h>

#define REQ_MAX 1024

struct conn {
    uint16_t used;
    uint8_t done;
    char req[REQ_MAX];
};

static struct conn conns[8];
uint64_t http_requests_served;

static struct conn *conn_alloc(void)
{
    for (unsigned i = 0; i < sizeof conns / sizeof conns[0]; i++)
        if (!conns[i].used && !conns[i].done) {
            conns[i].used = 1;           /* 1 = allocated, then bytes + 1 */
            return &conns[i];
        }
    return 0;
}

static void conn_free(struct conn *c)
{
    if (c) {
        c->used = 0;
        c->done = 0;
    }
}

/* Returns ERR_ABRT if the pcb had to be aborted (lwIP wants to be told). */
static err_t http_close(struct tcp_pcb *pcb, struct conn *c)
{
    conn_free(c);
    tcp_arg(pcb, 0);
    tcp_recv(pcb, 0);
    tcp_err(pcb, 0);
    if (tcp_close(pcb) != ERR_OK) {
        tcp_abort(pcb);
        return ERR_ABRT;
    }
    return ERR_OK;
}

static int headers_complete(const char *s, int n)
{
    for (int i = 0; i + 1 < n; i++) {
        if (s[i] == '\n' && s[i + 1] == '\n')
            return 1;
        if (i + 3 < n && s[i] == '\r' && s[i + 1] == '\n' && s[i + 2] == '\r' && s[i + 3] == '\n')
            return 1;
    }
    return 0;
}

static void respond(struct tcp_pcb *pcb)
{
    char body[256], head[160];
    int64_t n = counter_increment();
    int blen, hlen;
    if (n < 0) {
        blen = snprintf(body, sizeof body, "disk write failed\nerror=io\n");
        hlen = snprintf(head, sizeof head,
                        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n", blen);
    } else {
        http_requests_served++;
        blen = snprintf(body, sizeof body,
                        "<html><head><title>colo-guest</title></head><body>\n"
                        "<h1>Requests served: %ld</h1>\n<pre>\ncount=%ld\n</pre>\n"
                        "</body></html>\n", n, n);
        hlen = snprintf(head, sizeof head,
                        "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n"
                        "Content-Length: %d\r\nX-Colo-Count: %ld\r\nConnection: close\r\n\r\n",
                        blen, n);
    }
    tcp_write(pcb, head, hlen, TCP_WRITE_FLAG_COPY | TCP_WRITE_FLAG_MORE);
    tcp_write(pcb, body, blen, TCP_WRITE_FLAG_COPY);
    tcp_output(pcb);
}

static err_t http_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err)
{
    struct conn *c = arg;
    if (!p)
        return http_close(pcb, c);
    err_t ret = ERR_OK;
    tcp_recved(pcb, p->tot_len);
    if (c && !c->done) {
        int have = c->used - 1;
        int n = p->tot_len;
        if (n > REQ_MAX - have)
            n = REQ_MAX - have;
        pbuf_copy_partial(p, c->req + have, (u16_t)n, 0);
        have += n;
        c->used = (uint16_t)(have + 1);
        if (headers_complete(c->req, have) || have == REQ_MAX) {
            c->done = 1;
            respond(pcb);
            /* Close after the reply: tcp_close sends FIN after queued data. */
            ret = http_close(pcb, c);
        }
    }
    pbuf_free(p);
    return ret;
}

static void http_err(void *arg, err_t err) { conn_free(arg); }

static err_t http_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
    if (err != ERR_OK || !pcb)
        return ERR_VAL;
    struct conn *c = conn_alloc();
    if (!c) {
        tcp_abort(pcb);
        return ERR_ABRT;
    }
    tcp_nagle_disable(pcb);
    tcp_arg(pcb, c);
    tcp_recv(pcb, http_recv);
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
