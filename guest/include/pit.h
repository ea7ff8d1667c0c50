/* PIT channel 0 at TICK_HZ on IRQ 0: the guest's only clock. */
#pragma once
#include <stdint.h>
#define TICK_HZ 100
void pit_init(void);
/* Ticks since pit_init (incremented by the IRQ 0 handler). */
extern volatile uint64_t ticks;
static inline uint32_t now_ms(void) { return (uint32_t)(ticks * (1000 / TICK_HZ)); }
