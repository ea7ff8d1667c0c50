/* The memory dirtier gives checkpoints pages to move. Rate N MiB/s = N*256
 * pages/s; per tick that is N*256/TICK_HZ pages, with the remainder carried
 * over so the long-run rate is exact. Each page gets one 8-byte store of a
 * value that changes every pass (a pass counter mixed with the page number),
 * so a content-hashing dirty-rate estimate (QEMU's calc-dirty-rate sampling)
 * sees every touched page as changed, not only the dirty-log bitmap. The
 * cursor walks the region cyclically: to be counted as N MiB/s over a window
 * of T seconds, the region must be at least N*T MiB (it is all free RAM). */
#include "dirtier.h"
#include "pit.h"
#include "console.h"

static volatile uint64_t *base;
static uint64_t npages, cursor, pass = 1;
static uint32_t rate, carry;

void dirtier_init(uint64_t start, uint64_t end, uint32_t mib_per_s)
{
    base = (volatile uint64_t *)start;
    npages = (end - start) / 4096;
    rate = mib_per_s;
}

void dirtier_set_rate(uint32_t mib_per_s)
{
    rate = mib_per_s;
    carry = 0;
}

uint32_t dirtier_rate(void) { return rate; }
uint64_t dirtier_region_mib(void) { return npages / 256; }

void dirtier_tick(void)
{
    if (!rate || !npages)
        return;
    uint32_t budget = rate * 256 + carry;
    uint32_t n = budget / TICK_HZ;
    carry = budget % TICK_HZ;
    while (n--) {
        base[cursor * 512] = pass << 32 | cursor;
        if (++cursor == npages) {
            cursor = 0;
            pass++;
        }
    }
}
