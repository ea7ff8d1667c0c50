#pragma once
/* Prints "COLO-GUEST POWEROFF", writes SLP_EN|SLP_TYP=0 to the ACPI PM1a
 * control register at 0x604, then (if still running) cli; hlt forever. */
void power_off(void) __attribute__((noreturn));
/* Make sure the PIIX4 PM I/O base is 0x600 and enabled (qboot leaves it off). */
void power_init(void);
