# xgrammar: the C++ core of xgrammar (grammar-constrained decoding; the engine vLLM, SGLang and
# TensorRT-LLM use), compiled from the sources scripts/setup.sh unpacks from the xgrammar sdist into
# .deps/xgrammar. Never committed; third-party code, so no project warning flags (its own build adds
# -Werror and -flto, which we leave out: a static library with slim LTO objects would force LTO on
# every binary that links it).
if(TARGET xgrammar)
  return()
endif()
set(ASL_XGRAMMAR_DIR "${CMAKE_CURRENT_LIST_DIR}/../.deps/xgrammar" CACHE PATH
    "xgrammar sources (scripts/setup.sh unpacks them)")
get_filename_component(_xg "${ASL_XGRAMMAR_DIR}" ABSOLUTE)
if(NOT EXISTS "${_xg}/cpp/grammar_matcher.cc")
  message(FATAL_ERROR "xgrammar is missing at ${_xg}: run scripts/setup.sh (it unpacks it from the "
                      "xgrammar sdist), or set ASL_XGRAMMAR_DIR")
endif()
file(GLOB _xg_sources CONFIGURE_DEPENDS ${_xg}/cpp/*.cc ${_xg}/cpp/support/*.cc ${_xg}/cpp/converter_ext/*.cc)
add_library(xgrammar STATIC ${_xg_sources})
target_include_directories(xgrammar SYSTEM PUBLIC ${_xg}/include ${_xg}/3rdparty/dlpack/include)
target_include_directories(xgrammar SYSTEM PRIVATE ${_xg}/3rdparty/picojson)
target_compile_definitions(xgrammar PUBLIC XGRAMMAR_ENABLE_CPPTRACE=0 XGRAMMAR_ENABLE_INTERNAL_CHECK=0)
target_compile_features(xgrammar PUBLIC cxx_std_17)
# Compile it optimised even in Debug and sanitizer builds: its Earley parser and mask cache are the
# per-token cost of a constrained request.
target_compile_options(xgrammar PRIVATE $<$<CONFIG:Debug>:-O2>)
