/* virtio-blk: synchronous single-sector reads, writes and flushes, and a
 * throughput benchmark with larger requests. */
#pragma once
#include <stdint.h>
/* Finds and starts the first virtio-blk (1af4:1001); 0 if there is none. */
int blk_init(void);
uint64_t blk_capacity(void);         /* in 512-byte sectors */
/* 0 on success; the buffer is 512 bytes. Interrupts must be enabled. */
int blk_read(uint64_t sector, void *buf);
int blk_write(uint64_t sector, const void *buf);
/* Flush the device's write cache (no-op when the device has none to flush). */
int blk_flush(void);
/* Disk benchmark: `count` synchronous requests of `kib` KiB (4..64, a
 * multiple of 4), reads or writes, sequential from 4 KiB on (wrapping) or at
 * random request-aligned offsets above 4 KiB (sector 0, the counter, is
 * never touched). *bytes gets the bytes moved. 0 on success, -1 on a bad
 * argument or an I/O error. */
int blk_bench(int write, int random, uint32_t kib, uint32_t count, uint64_t *bytes);
