/*
 * Stand-in for libcuda.so.1 on hosts without an NVIDIA driver.
 *
 * The Legion/Realm libraries of the PyPI distribution were built with CUDA support and list
 * libcuda.so.1 as a needed library. Realm calls cuInit at start-up; answering
 * CUDA_ERROR_NO_DEVICE (100) makes it run on CPUs only. The build script compiles this file only
 * when the host has no libcuda.so.1, so a GPU node keeps its real driver.
 */
typedef int CUresult;
typedef unsigned long long CUdeviceptr;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_NO_DEVICE 100

CUresult cuInit(unsigned int flags) {
  (void)flags;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
  *name = error == CUDA_ERROR_NO_DEVICE ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN";
  return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char **text) {
  *text = error == CUDA_ERROR_NO_DEVICE ? "no CUDA driver on this host (ami2 libcuda stand-in)"
                                        : "unknown CUDA error (ami2 libcuda stand-in)";
  return CUDA_SUCCESS;
}

CUresult cuMemFreeHost(void *ptr) {
  (void)ptr;
  return CUDA_ERROR_NO_DEVICE;
}

CUresult cuMemFree_v2(CUdeviceptr ptr) {
  (void)ptr;
  return CUDA_ERROR_NO_DEVICE;
}
