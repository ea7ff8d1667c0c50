/* virtio-blk: synchronous single-sector reads, writes and flushes. */
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
