# The accuracy benchmark's sources (asl-cli eval), included by tools/CMakeLists.txt.
set(ASL_EVAL_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/haystack.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tasks.cpp
  ${CMAKE_CURRENT_LIST_DIR}/scoring.cpp
  ${CMAKE_CURRENT_LIST_DIR}/report.cpp
  ${CMAKE_CURRENT_LIST_DIR}/runner.cpp
  ${CMAKE_CURRENT_LIST_DIR}/eval.cpp)
