/* The multiboot command line: space-separated key=value words (see README). */
#pragma once
#include <stdint.h>

struct config {
    uint32_t ip, netmask, gw;        /* host byte order; gw 0 = none */
    uint32_t dirty_mib_s;            /* memory dirtier rate, MiB per second */
};

/* Fills *c; on any error prints "COLO-GUEST ERROR: ..." and powers off. */
void cmdline_parse(const char *line, struct config *c);
/* "a.b.c.d" -> host-order address; 0 on success, -1 if malformed. */
int parse_ipv4(const char *s, int len, uint32_t *out);
int parse_uint(const char *s, int len, uint32_t max, uint32_t *out);
