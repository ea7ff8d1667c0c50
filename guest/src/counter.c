/* Request counter on disk. The increment is write-then-flush before anything
 * is acknowledged, so after a crash or failover the disk never holds less
 * than what clients were told (and, the reply coming after the flush, a
 * client told N means N is on disk). */
#include "counter.h"
#include "virtio_blk.h"
#include "console.h"
#include <string.h>

static const char magic[8] = { 'C', 'O', 'L', 'O', 'C', 'N', 'T', '1' };
static uint64_t count;
static uint8_t sector[512];

static uint32_t fnv1a(const uint8_t *p, int n)
{
    uint32_t h = 2166136261u;
    while (n--)
        h = (h ^ *p++) * 16777619u;
    return h;
}

uint64_t counter_load(int *fresh)
{
    if (blk_read(0, sector))
        fatal("cannot read sector 0 of the virtio disk");
    *fresh = memcmp(sector, magic, 8) != 0;
    if (*fresh)
        return count = 0;
    uint32_t h;
    memcpy(&count, sector + 8, 8);
    memcpy(&h, sector + 16, 4);
    if (h != fnv1a(sector, 16))
        fatal("disk counter sector is corrupt (hash 0x%x, want 0x%x)", h, fnv1a(sector, 16));
    return count;
}

int64_t counter_increment(void)
{
    uint64_t next = count + 1;
    memset(sector, 0, sizeof sector);
    memcpy(sector, magic, 8);
    memcpy(sector + 8, &next, 8);
    uint32_t h = fnv1a(sector, 16);
    memcpy(sector + 16, &h, 4);
    if (blk_write(0, sector) || blk_flush()) {
        kprintf("COLO-GUEST WARN disk write of count=%lu failed\n", next);
        return -1;
    }
    count = next;
    return (int64_t)next;
}

uint64_t counter_value(void) { return count; }
