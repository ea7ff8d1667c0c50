/* The HTTP request counter, persisted in sector 0 of the virtio disk.
 * Sector 0 layout (little-endian): bytes 0-7 magic "COLOCNT1", 8-15 count
 * (u64), 16-19 FNV-1a 32-bit hash of bytes 0-15, the rest zero. A sector with
 * no magic counts as 0 (a fresh disk); a bad hash is a fatal error. */
#pragma once
#include <stdint.h>
/* Reads sector 0; returns the stored count (fatal on a corrupt sector). */
uint64_t counter_load(int *fresh);
/* count+1, written and flushed; returns the new value, or -1 on I/O error
 * (then the count in memory is unchanged). */
int64_t counter_increment(void);
uint64_t counter_value(void);
