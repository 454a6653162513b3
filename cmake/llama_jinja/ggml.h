// The one thing llama.cpp's common/json.cpp takes from ggml.h: GGML_ASSERT (nlohmann's JSON_ASSERT).
// A stand-in so the Jinja engine builds without ggml; like ggml's, it aborts with the condition.
#pragma once
#include <cstdio>
#include <cstdlib>
#define GGML_ASSERT(x)                                                                    \
  do {                                                                                    \
    if (!(x)) {                                                                           \
      std::fprintf(stderr, "%s:%d: GGML_ASSERT(%s) failed\n", __FILE__, __LINE__, #x);   \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)
