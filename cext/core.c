#include "core.h"

const char *hpcrun_core_version(void) { return "0.1.0"; }
