#ifndef HPCRUN_CORE_H
#define HPCRUN_CORE_H
const char *hpcrun_core_version(void);
#endif
