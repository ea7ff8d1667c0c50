/* Legacy 8259A pair, remapped to vectors 32..47, with ELCR level control. */
#pragma once
void pic_init(void);
void pic_unmask(int irq);
void pic_mask(int irq);
void pic_eoi(int irq);
/* Mark an IRQ level-triggered in the ELCR (0x4D0/0x4D1): PCI INTx lines are. */
void pic_set_level(int irq);
/* True for a spurious IRQ 7/15 (not in the in-service register): no EOI then. */
int pic_spurious(int irq);
