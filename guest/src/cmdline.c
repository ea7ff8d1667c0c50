/* Command-line parsing. QEMU passes "<kernel path> <-append text>", vmmd its
 * own string: words without '=' are ignored, unknown keys too (so loaders may
 * add their own), but a known key with a bad value is fatal, as is a missing
 * ip=. Errors power the guest off so a test never waits on a hung guest. */
#include "cmdline.h"
#include "console.h"
#include <string.h>

int parse_uint(const char *s, int len, uint32_t max, uint32_t *out)
{
    uint64_t v = 0;
    if (len <= 0 || len > 10)
        return -1;
    for (int i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int parse_ipv4(const char *s, int len, uint32_t *out)
{
    uint32_t a = 0;
    int part = 0, start = 0;
    for (int i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            uint32_t octet;
            if (parse_uint(s + start, i - start, 255, &octet) || i - start > 3)
                return -1;
            a = a << 8 | octet;
            part++;
            start = i + 1;
        }
    }
    if (part != 4)
        return -1;
    *out = a;
    return 0;
}

static int key_is(const char *w, int klen, const char *k)
{
    return (int)strlen(k) == klen && memcmp(w, k, klen) == 0;
}

void cmdline_parse(const char *line, struct config *c)
{
    int have_ip = 0;
    memset(c, 0, sizeof *c);
    const char *p = line;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *w = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        int wlen = (int)(p - w);
        const char *eq = memchr(w, '=', wlen);
        if (!eq)
            continue;
        int klen = (int)(eq - w);
        const char *v = eq + 1;
        int vlen = wlen - klen - 1;
        if (key_is(w, klen, "ip")) {
            /* ip=A.B.C.D or ip=A.B.C.D/PREFIX (prefix 1..30, default 24) */
            int alen = vlen;
            uint32_t prefix = 24;
            for (int i = 0; i < vlen; i++)
                if (v[i] == '/') {
                    alen = i;
                    if (parse_uint(v + i + 1, vlen - i - 1, 30, &prefix) || prefix == 0)
                        fatal("bad ip= prefix in '%.*s' (want ip=A.B.C.D/1..30)", vlen, v);
                }
            if (parse_ipv4(v, alen, &c->ip) || c->ip == 0 || (c->ip >> 24) == 127 ||
                (c->ip >> 28) >= 14)
                fatal("bad ip= address '%.*s' (want ip=A.B.C.D[/PREFIX], a unicast address)",
                      vlen, v);
            c->netmask = prefix ? ~0u << (32 - prefix) : 0;
            have_ip = 1;
        } else if (key_is(w, klen, "gw")) {
            if (parse_ipv4(v, vlen, &c->gw))
                fatal("bad gw= address '%.*s' (want gw=A.B.C.D)", vlen, v);
        } else if (key_is(w, klen, "dirty")) {
            if (parse_uint(v, vlen, 4096, &c->dirty_mib_s))
                fatal("bad dirty= value '%.*s' (want MiB per second, 0..4096)", vlen, v);
        }
    }
    if (!have_ip)
        fatal("no ip= on the command line (want ip=A.B.C.D[/PREFIX] [gw=A.B.C.D] [dirty=MIB_PER_S])");
}
