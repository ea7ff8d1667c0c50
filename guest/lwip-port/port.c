/* What lwIP asks of the platform under NO_SYS: a millisecond clock, a random
 * number, diagnostics and assertions (which are fatal: clear console error,
 * power off). */
#include "lwip/sys.h"
#include "console.h"
#include "pit.h"
#include "io.h"

u32_t sys_now(void) { return now_ms(); }

uint32_t lwip_port_rand(void)
{
    /* xorshift seeded from the TSC: different per boot, good enough for ISNs */
    static uint64_t s;
    if (!s)
        s = rdtsc() | 1;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (uint32_t)s;
}

void lwip_port_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
}

void lwip_port_assert(const char *msg, const char *file, int line)
{
    fatal("lwIP assertion \"%s\" failed at %s:%d", msg, file, line);
}
