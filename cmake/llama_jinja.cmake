# llama_jinja: llama.cpp's Jinja engine (common/jinja, with common/json over its vendored
# nlohmann/json and common/unicode), compiled from the sources scripts/setup.sh unpacks from the
# llama-cpp-python sdist into .deps/llama.cpp. Never committed; third-party code, so no project
# warning flags. The vendored nlohmann include directory stays PRIVATE: our own targets use
# Debian's nlohmann_json, and the engine's headers (jinja/*.h, json.h) do not expose it.
if(TARGET llama_jinja)
  return()
endif()
set(ASL_LLAMA_CPP_DIR "${CMAKE_CURRENT_LIST_DIR}/../.deps/llama.cpp" CACHE PATH
    "llama.cpp sources with common/jinja (scripts/setup.sh unpacks them)")
get_filename_component(_llama "${ASL_LLAMA_CPP_DIR}" ABSOLUTE)
if(NOT EXISTS "${_llama}/common/jinja/runtime.cpp")
  message(FATAL_ERROR "llama.cpp's Jinja engine is missing at ${_llama}: run scripts/setup.sh "
                      "(it unpacks it from the llama-cpp-python sdist), or set ASL_LLAMA_CPP_DIR")
endif()
add_library(llama_jinja STATIC
  ${_llama}/common/jinja/caps.cpp
  ${_llama}/common/jinja/lexer.cpp
  ${_llama}/common/jinja/parser.cpp
  ${_llama}/common/jinja/runtime.cpp
  ${_llama}/common/jinja/string.cpp
  ${_llama}/common/jinja/value.cpp
  ${_llama}/common/json.cpp
  ${_llama}/common/unicode.cpp)
target_include_directories(llama_jinja SYSTEM PUBLIC ${_llama}/common)
# cmake/llama_jinja/ggml.h stands in for ggml.h (json.cpp takes only GGML_ASSERT from it).
target_include_directories(llama_jinja SYSTEM PRIVATE ${_llama}/vendor ${CMAKE_CURRENT_LIST_DIR}/llama_jinja)
set_target_properties(llama_jinja PROPERTIES POSITION_INDEPENDENT_CODE ON)
# The directory the real model templates live in (tests compare them with Hugging Face).
set(ASL_LLAMA_TEMPLATES_DIR "${_llama}/models/templates" CACHE INTERNAL "llama.cpp's real model templates")
