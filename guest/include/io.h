/* Port I/O and the few privileged instructions the guest uses. */
#pragma once
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
/* sti takes effect after the next instruction, so an interrupt that arrives
 * between a "no work" check (done with interrupts off) and hlt still wakes us. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
/* x86 keeps stores ordered with stores and loads with loads; what the virtio
 * rings need beyond a compiler barrier is store->load ordering (mfence). */
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* Called with interrupts off: sti;hlt, adding the halted TSC ticks to
 * idle_tsc (busy = elapsed - idle, reported by the control "status"). Under
 * QEMU TCG with -icount shift=0 one TSC tick is one instruction, which is how
 * docs/PERFORMANCE.md counts instructions per request. */
extern uint64_t idle_tsc;
static inline void cpu_idle(void)
{
    uint64_t t0 = rdtsc();
    sti_hlt();
    idle_tsc += rdtsc() - t0;           /* includes the waking handler: small */
}
