/* PIT channel 0, mode 2 (rate generator), TICK_HZ. The handler only counts:
 * all work (lwIP timers, the dirtier, the tick line) runs in the main loop. */
#include "pit.h"
#include "idt.h"
#include "io.h"

volatile uint64_t ticks;
uint64_t idle_tsc;                   /* see cpu_idle() in io.h */

static void on_tick(void *arg) { ticks++; }

void pit_init(void)
{
    uint16_t div = 1193182 / TICK_HZ;
    outb(0x43, 0x34);            /* channel 0, lo/hi byte, mode 2, binary */
    outb(0x40, div & 0xFF);
    outb(0x40, div >> 8);
    irq_register(0, on_tick, 0);
}
