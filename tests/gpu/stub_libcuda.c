/* A stand-in for libcuda.so.1 for tests without a GPU: the five driver calls that
 * cuda_driver.py makes, on N made-up devices (N from $STUB_LIBCUDA_DEVICES, default 4),
 * filtered by $CUDA_VISIBLE_DEVICES as the real driver filters them (device numbers or
 * UUIDs, comma-separated; the list ends at the first entry that names no device).
 * Device d's UUID is GPU-dddddddd-0000-4000-8000-00000000000d (d in hex in each group).
 * Build: cc -shared -fPIC -o libcuda-stub.so stub_libcuda.c */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_NO_DEVICE 100
#define CUDA_ERROR_INVALID_DEVICE 101
#define MAX_DEVICES 64

static int visible[MAX_DEVICES];
static int nvisible = -1;

static void uuid_of(int d, unsigned char out[16]) {
  memset(out, 0, 16);
  out[0] = out[1] = out[2] = out[3] = (unsigned char)d;
  out[6] = 0x40;
  out[8] = 0x80;
  out[15] = (unsigned char)d;
}

static int device_named(const char *name, int total) {
  char *end;
  long n = strtol(name, &end, 10);
  if (end != name && *end == '\0') return (n >= 0 && n < total) ? (int)n : -1;
  for (int d = 0; d < total; d++) {
    unsigned char u[16];
    char text[64];
    uuid_of(d, u);
    snprintf(text, sizeof text,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
             u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
    if (strcmp(name, text) == 0) return d;
  }
  return -1;
}

int cuInit(unsigned int flags) {
  const char *count = getenv("STUB_LIBCUDA_DEVICES");
  int total = count ? atoi(count) : 4;
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (total > MAX_DEVICES) total = MAX_DEVICES;
  const char *list = getenv("CUDA_VISIBLE_DEVICES");
  nvisible = 0;
  if (!list) {
    for (int d = 0; d < total; d++) visible[nvisible++] = d;
  } else {
    char buffer[4096];
    snprintf(buffer, sizeof buffer, "%s", list);
    for (char *entry = strtok(buffer, ","); entry && nvisible < MAX_DEVICES; entry = strtok(NULL, ",")) {
      int d = device_named(entry, total);
      if (d < 0) break;
      visible[nvisible++] = d;
    }
  }
  return nvisible ? CUDA_SUCCESS : CUDA_ERROR_NO_DEVICE;
}

int cuDeviceGetCount(int *count) {
  if (nvisible < 0) return CUDA_ERROR_NOT_INITIALIZED;
  *count = nvisible;
  return CUDA_SUCCESS;
}

int cuDeviceGet(int *device, int ordinal) {
  if (nvisible < 0) return CUDA_ERROR_NOT_INITIALIZED;
  if (ordinal < 0 || ordinal >= nvisible) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

int cuDeviceGetUuid(unsigned char uuid[16], int device) {
  if (nvisible < 0) return CUDA_ERROR_NOT_INITIALIZED;
  if (device < 0 || device >= nvisible) return CUDA_ERROR_INVALID_DEVICE;
  uuid_of(visible[device], uuid);
  return CUDA_SUCCESS;
}

int cuGetErrorName(int error, const char **name) {
  switch (error) {
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_INITIALIZED: *name = "CUDA_ERROR_NOT_INITIALIZED"; return CUDA_SUCCESS;
    case CUDA_ERROR_NO_DEVICE: *name = "CUDA_ERROR_NO_DEVICE"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; return CUDA_SUCCESS;
  }
  return CUDA_ERROR_INVALID_VALUE;
}
