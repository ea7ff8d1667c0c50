/* Memory dirtier: writes one word into each of N MiB worth of 4 KiB pages per
 * second, spread evenly over the timer ticks, cycling through a region. */
#pragma once
#include <stdint.h>
void dirtier_init(uint64_t start, uint64_t end, uint32_t mib_per_s);
void dirtier_set_rate(uint32_t mib_per_s);
uint32_t dirtier_rate(void);
/* Called by the main loop once per elapsed tick. */
void dirtier_tick(void);
uint64_t dirtier_region_mib(void);
