/* The Legion C API, as bindgen sees it. */
#include "legion/legion_c.h"
