# Included by CMake right after project() (-DCMAKE_PROJECT_INCLUDE=cmake/torch-without-cuda-toolkit.cmake,
# which scripts/build.sh passes when no nvcc is found, and the images' build stage always): lets
# find_package(Torch) use the PyPI wheel (a CUDA build) on a machine without the CUDA toolkit. TorchConfig would otherwise
# enable the CUDA language (it needs nvcc) only to define the imported target torch::cudart, and
# stop with "Your installed Caffe2 version uses CUDA but I cannot find the CUDA libraries";
# Caffe2's public/cuda.cmake returns early when torch::cudart exists. Nothing of ours compiles
# CUDA code: the target only has to link the wheel's own CUDA runtime and carry its headers.
if(NOT TARGET torch::cudart)
  file(GLOB _asl_cu "${CMAKE_SOURCE_DIR}/.venv/lib/python3*/site-packages/nvidia/cu1*")
  list(GET _asl_cu 0 _asl_cu)
  file(GLOB _asl_cudart "${_asl_cu}/lib/libcudart.so.*")
  if(NOT _asl_cudart)
    message(FATAL_ERROR "torch-without-cuda-toolkit: no libcudart.so.* under ${_asl_cu}/lib")
  endif()
  add_library(torch::cudart INTERFACE IMPORTED)
  set_target_properties(torch::cudart PROPERTIES
    INTERFACE_LINK_LIBRARIES "${_asl_cudart}"
    INTERFACE_INCLUDE_DIRECTORIES "${_asl_cu}/include")
  message(STATUS "torch::cudart from the wheel: ${_asl_cudart} (no CUDA toolkit)")
endif()
