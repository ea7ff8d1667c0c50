/* UDP control service on port 7000, one text command per datagram, one reply:
 *   "dirty N"  -> set the dirtier to N MiB/s; reply "ok dirty=N"
 *   "status"   -> reply "count=C dirty=N uptime_ms=T http=H tsc=X idle_tsc=Y"
 *                 (TSC now, and TSC ticks spent halted since boot)
 *   "poweroff" -> reply "ok poweroff", then the guest powers off
 *   "disk read|write seq|rand KIB COUNT" -> COUNT synchronous disk requests of
 *                 KIB KiB (see blk_bench); reply "ok disk bytes=B tsc=T"
 *                 (TSC ticks taken) or "error disk"
 * anything else -> "error unknown command". Trailing whitespace/newline is ignored. */
#include "services.h"
#include "dirtier.h"
#include "counter.h"
#include "cmdline.h"
#include "pit.h"
#include "console.h"
#include "io.h"
#include "virtio_blk.h"
#include "lwip/udp.h"
#include <stdio.h>
#include <string.h>

volatile int poweroff_requested;

static void reply(struct udp_pcb *pcb, const ip_addr_t *addr, u16_t port, const char *s)
{
    int n = (int)strlen(s);
    struct pbuf *p = pbuf_alloc(PBUF_TRANSPORT, (u16_t)n, PBUF_RAM);
    if (!p)
        return;
    memcpy(p->payload, s, n);
    udp_sendto(pcb, p, addr, port);
    pbuf_free(p);
}

/* "read|write seq|rand KIB COUNT" */
static void disk_command(const char *args, char *out, int size)
{
    char words[4][16];
    int w = 0, len = 0;
    for (const char *c = args;; c++) {
        if (*c == ' ' || *c == 0) {
            if (len && w < 4)
                words[w++][len] = 0;
            len = 0;
            if (!*c)
                break;
        } else if (w < 4 && len < 15) {
            words[w][len++] = *c;
        }
    }
    uint32_t kib, count;
    int write = w == 4 && strcmp(words[0], "write") == 0;
    int random = w == 4 && strcmp(words[1], "rand") == 0;
    uint64_t bytes, start = rdtsc();
    if (w != 4 || (!write && strcmp(words[0], "read")) || (!random && strcmp(words[1], "seq")) ||
        parse_uint(words[2], (int)strlen(words[2]), 64, &kib) ||
        parse_uint(words[3], (int)strlen(words[3]), 1000000, &count) ||
        blk_bench(write, random, kib, count, &bytes)) {
        snprintf(out, size, "error disk");
        return;
    }
    snprintf(out, size, "ok disk bytes=%lu tsc=%lu", bytes, rdtsc() - start);
}

static void control_recv(void *arg, struct udp_pcb *pcb, struct pbuf *p,
                         const ip_addr_t *addr, u16_t port)
{
    char cmd[64], out[128];
    int n = pbuf_copy_partial(p, cmd, sizeof cmd - 1, 0);
    pbuf_free(p);
    while (n > 0 && (cmd[n - 1] == '\n' || cmd[n - 1] == '\r' || cmd[n - 1] == ' '))
        n--;
    cmd[n] = 0;
    uint32_t v;
    if (n > 6 && memcmp(cmd, "dirty ", 6) == 0 && !parse_uint(cmd + 6, n - 6, 4096, &v)) {
        dirtier_set_rate(v);
        snprintf(out, sizeof out, "ok dirty=%u", v);
        kprintf("COLO-GUEST DIRTY rate=%uMiB/s\n", v);
    } else if (strcmp(cmd, "status") == 0) {
        snprintf(out, sizeof out, "count=%lu dirty=%u uptime_ms=%lu http=%lu tsc=%lu idle_tsc=%lu",
                 counter_value(), dirtier_rate(), ticks * (1000 / TICK_HZ),
                 http_requests_served, rdtsc(), idle_tsc);
    } else if (n > 5 && memcmp(cmd, "disk ", 5) == 0) {
        disk_command(cmd + 5, out, sizeof out);
    } else if (strcmp(cmd, "poweroff") == 0) {
        snprintf(out, sizeof out, "ok poweroff");
        poweroff_requested = 1;
    } else {
        snprintf(out, sizeof out, "error unknown command");
    }
    reply(pcb, addr, port, out);
}

void control_init(void)
{
    struct udp_pcb *u = udp_new();
    if (!u || udp_bind(u, IP_ADDR_ANY, PORT_CONTROL) != ERR_OK)
        fatal("cannot bind UDP port %d", PORT_CONTROL);
    udp_recv(u, control_recv, 0);
}
