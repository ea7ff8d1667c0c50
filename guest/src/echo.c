/* Echo (RFC 862) on TCP and UDP port 7, lwIP raw API. TCP: whatever arrives
 * is written back; if the send buffer is full the rest waits on the pcb (its
 * arg) and goes out from the sent callback, and the window is only reopened
 * (tcp_recved) for bytes actually queued, so a fast sender is flow-controlled
 * rather than dropped. */
#include "services.h"
#include "console.h"
#include "lwip/tcp.h"
#include "lwip/udp.h"

static void echo_close(struct tcp_pcb *pcb)
{
    struct pbuf *pending = pcb->callback_arg;
    if (pending)
        pbuf_free(pending);
    tcp_arg(pcb, 0);
    tcp_recv(pcb, 0);
    tcp_sent(pcb, 0);
    tcp_err(pcb, 0);
    if (tcp_close(pcb) != ERR_OK)
        tcp_abort(pcb);
}

/* Queue as much of the pending data as fits; keep the rest. */
static void echo_send(struct tcp_pcb *pcb)
{
    struct pbuf *p = pcb->callback_arg;
    int wrote = 0;
    while (p) {
        uint16_t room = tcp_sndbuf(pcb);
        if (room == 0)
            break;
        uint16_t n = p->len < room ? p->len : room;
        if (tcp_write(pcb, p->payload, n, TCP_WRITE_FLAG_COPY) != ERR_OK)
            break;
        wrote = 1;
        tcp_recved(pcb, n);
        if (n < p->len) {
            pbuf_remove_header(p, n);
            break;
        }
        struct pbuf *next = p->next;
        if (next)
            pbuf_ref(next);
        pbuf_free(p);        /* frees only the head: next has its own ref now */
        p = next;
    }
    tcp_arg(pcb, p);
    if (wrote)
        tcp_output(pcb);
}

static err_t echo_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err)
{
    if (!p) {                                   /* peer closed */
        echo_close(pcb);
        return ERR_OK;
    }
    struct pbuf *pending = arg;
    if (pending)
        pbuf_cat(pending, p);
    else
        tcp_arg(pcb, p);
    echo_send(pcb);
    return ERR_OK;
}

static err_t echo_sent(void *arg, struct tcp_pcb *pcb, u16_t len)
{
    if (arg)
        echo_send(pcb);
    return ERR_OK;
}

static void echo_err(void *arg, err_t err)
{
    /* The pcb is already gone; drop what it had pending. */
    if (arg)
        pbuf_free(arg);
}

static err_t echo_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
    if (err != ERR_OK || !pcb)
        return ERR_VAL;
    tcp_nagle_disable(pcb);                     /* echo each write at once */
    tcp_arg(pcb, 0);
    tcp_recv(pcb, echo_recv);
    tcp_sent(pcb, echo_sent);
    tcp_err(pcb, echo_err);
    return ERR_OK;
}

static void udp_echo_recv(void *arg, struct udp_pcb *pcb, struct pbuf *p,
                          const ip_addr_t *addr, u16_t port)
{
    udp_sendto(pcb, p, addr, port);
    pbuf_free(p);
}

void echo_init(void)
{
    struct tcp_pcb *l = tcp_new();
    if (!l || tcp_bind(l, IP_ADDR_ANY, PORT_ECHO) != ERR_OK || !(l = tcp_listen(l)))
        fatal("cannot listen on TCP port %d", PORT_ECHO);
    tcp_accept(l, echo_accept);
    struct udp_pcb *u = udp_new();
    if (!u || udp_bind(u, IP_ADDR_ANY, PORT_ECHO) != ERR_OK)
        fatal("cannot bind UDP port %d", PORT_ECHO);
    udp_recv(u, udp_echo_recv, 0);
}
