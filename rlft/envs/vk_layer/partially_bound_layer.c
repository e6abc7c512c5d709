/*
 * VK_LAYER_RLFT_partially_bound: a minimal Vulkan layer that lets SAPIEN (ManiSkill3's simulator) start on a
 * Vulkan driver without the `descriptorBindingPartiallyBound` feature, e.g. Mesa's lavapipe (CPU) in Debian 12.
 *
 * SAPIEN 3 builds render materials even with render_backend="none" and refuses a device that does not report this
 * feature. For state-only simulation nothing is ever drawn, so the layer
 *   - reports the feature as supported (vkGetPhysicalDeviceFeatures2[KHR]: descriptor-indexing and Vulkan 1.2
 *     feature structs), and
 *   - removes it from vkCreateDevice's request when the driver really lacks it (restored after the call),
 * and passes every other call straight through. On a device that supports the feature it changes nothing.
 * Images rendered through this layer are not guaranteed to be correct; rlft uses it for state observations only.
 *
 * Build: gcc -shared -fPIC -O2 -o libVkLayer_rlft_partially_bound.so partially_bound_layer.c  (needs the Vulkan
 * headers, Debian package libvulkan-dev). rlft/envs/vk_layer/__init__.py builds it and enables it on demand.
 */
#include <pthread.h>
#include <string.h>
#include <vulkan/vk_layer.h>
#include <vulkan/vulkan.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_OBJECTS 64

typedef struct {
    void *key; /* the loader's dispatch pointer, shared by an instance and its physical devices */
    VkInstance instance;
    PFN_vkGetInstanceProcAddr next_gipa;
    PFN_vkDestroyInstance next_destroy_instance;
    PFN_vkGetPhysicalDeviceFeatures2 next_features2;
    PFN_vkGetPhysicalDeviceFeatures2 next_features2_khr;
} InstanceData;

typedef struct {
    void *key;
    PFN_vkGetDeviceProcAddr next_gdpa;
    PFN_vkDestroyDevice next_destroy_device;
} DeviceData;

static InstanceData g_instances[MAX_OBJECTS];
static DeviceData g_devices[MAX_OBJECTS];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static void *dispatch_key(const void *handle) { return handle ? *(void *const *)handle : NULL; }

static InstanceData *find_instance(void *key) {
    InstanceData *last = NULL;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < MAX_OBJECTS; i++) {
        if (g_instances[i].key == NULL) continue;
        if (g_instances[i].key == key) { last = &g_instances[i]; break; }
    }
    if (last == NULL) /* a loader that gives physical devices their own dispatch pointer: use the only instance */
        for (int i = 0; i < MAX_OBJECTS; i++)
            if (g_instances[i].key != NULL) last = &g_instances[i];
    pthread_mutex_unlock(&g_lock);
    return last;
}

static DeviceData *find_device(void *key) {
    DeviceData *d = NULL;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < MAX_OBJECTS && d == NULL; i++)
        if (g_devices[i].key != NULL && g_devices[i].key == key) d = &g_devices[i];
    pthread_mutex_unlock(&g_lock);
    return d;
}

/* ------------------------------------------------------------------------------------------------ features */

static void report_partially_bound(void *chain) {
    for (VkBaseOutStructure *s = (VkBaseOutStructure *)chain; s != NULL; s = s->pNext) {
        if (s->sType == VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DESCRIPTOR_INDEXING_FEATURES)
            ((VkPhysicalDeviceDescriptorIndexingFeatures *)s)->descriptorBindingPartiallyBound = VK_TRUE;
        else if (s->sType == VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES)
            ((VkPhysicalDeviceVulkan12Features *)s)->descriptorBindingPartiallyBound = VK_TRUE;
    }
}

static VKAPI_ATTR void VKAPI_CALL layer_GetPhysicalDeviceFeatures2(VkPhysicalDevice pd,
                                                                  VkPhysicalDeviceFeatures2 *features) {
    InstanceData *inst = find_instance(dispatch_key(pd));
    if (inst == NULL || inst->next_features2 == NULL) return;
    inst->next_features2(pd, features);
    report_partially_bound(features->pNext);
}

static VKAPI_ATTR void VKAPI_CALL layer_GetPhysicalDeviceFeatures2KHR(VkPhysicalDevice pd,
                                                                     VkPhysicalDeviceFeatures2 *features) {
    InstanceData *inst = find_instance(dispatch_key(pd));
    PFN_vkGetPhysicalDeviceFeatures2 next = inst ? (inst->next_features2_khr ? inst->next_features2_khr
                                                                             : inst->next_features2)
                                                 : NULL;
    if (next == NULL) return;
    next(pd, features);
    report_partially_bound(features->pNext);
}

/* does the driver itself support descriptorBindingPartiallyBound? */
static VkBool32 driver_supports_partially_bound(InstanceData *inst, VkPhysicalDevice pd) {
    PFN_vkGetPhysicalDeviceFeatures2 q = inst ? (inst->next_features2 ? inst->next_features2
                                                                      : inst->next_features2_khr)
                                              : NULL;
    if (q == NULL) return VK_FALSE;
    VkPhysicalDeviceDescriptorIndexingFeatures idx;
    memset(&idx, 0, sizeof(idx));
    idx.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DESCRIPTOR_INDEXING_FEATURES;
    VkPhysicalDeviceFeatures2 f;
    memset(&f, 0, sizeof(f));
    f.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
    f.pNext = &idx;
    q(pd, &f);
    return idx.descriptorBindingPartiallyBound;
}

/* ------------------------------------------------------------------------------------------------ instance */

static VKAPI_ATTR VkResult VKAPI_CALL layer_CreateInstance(const VkInstanceCreateInfo *info,
                                                           const VkAllocationCallbacks *alloc, VkInstance *out) {
    VkLayerInstanceCreateInfo *link = (VkLayerInstanceCreateInfo *)info->pNext;
    while (link && !(link->sType == VK_STRUCTURE_TYPE_LOADER_INSTANCE_CREATE_INFO &&
                     link->function == VK_LAYER_LINK_INFO))
        link = (VkLayerInstanceCreateInfo *)link->pNext;
    if (link == NULL) return VK_ERROR_INITIALIZATION_FAILED;
    PFN_vkGetInstanceProcAddr gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext; /* the next layer reads its own link */
    PFN_vkCreateInstance create = (PFN_vkCreateInstance)gipa(VK_NULL_HANDLE, "vkCreateInstance");
    if (create == NULL) return VK_ERROR_INITIALIZATION_FAILED;
    VkResult r = create(info, alloc, out);
    if (r != VK_SUCCESS) return r;

    InstanceData d;
    d.key = dispatch_key(*out);
    d.instance = *out;
    d.next_gipa = gipa;
    d.next_destroy_instance = (PFN_vkDestroyInstance)gipa(*out, "vkDestroyInstance");
    d.next_features2 = (PFN_vkGetPhysicalDeviceFeatures2)gipa(*out, "vkGetPhysicalDeviceFeatures2");
    d.next_features2_khr = (PFN_vkGetPhysicalDeviceFeatures2)gipa(*out, "vkGetPhysicalDeviceFeatures2KHR");
    pthread_mutex_lock(&g_lock);
    int slot = -1;
    for (int i = 0; i < MAX_OBJECTS && slot < 0; i++)
        if (g_instances[i].key == NULL) slot = i;
    if (slot >= 0) g_instances[slot] = d;
    pthread_mutex_unlock(&g_lock);
    return slot >= 0 ? VK_SUCCESS : VK_ERROR_OUT_OF_HOST_MEMORY;
}

static VKAPI_ATTR void VKAPI_CALL layer_DestroyInstance(VkInstance instance, const VkAllocationCallbacks *alloc) {
    void *key = dispatch_key(instance);
    PFN_vkDestroyInstance next = NULL;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < MAX_OBJECTS; i++)
        if (g_instances[i].key != NULL && g_instances[i].key == key) {
            next = g_instances[i].next_destroy_instance;
            memset(&g_instances[i], 0, sizeof(InstanceData));
            break;
        }
    pthread_mutex_unlock(&g_lock);
    if (next) next(instance, alloc);
}

/* ------------------------------------------------------------------------------------------------ device */

static VKAPI_ATTR VkResult VKAPI_CALL layer_CreateDevice(VkPhysicalDevice pd, const VkDeviceCreateInfo *info,
                                                         const VkAllocationCallbacks *alloc, VkDevice *out) {
    VkLayerDeviceCreateInfo *link = (VkLayerDeviceCreateInfo *)info->pNext;
    while (link && !(link->sType == VK_STRUCTURE_TYPE_LOADER_DEVICE_CREATE_INFO &&
                     link->function == VK_LAYER_LINK_INFO))
        link = (VkLayerDeviceCreateInfo *)link->pNext;
    if (link == NULL) return VK_ERROR_INITIALIZATION_FAILED;
    PFN_vkGetInstanceProcAddr gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    PFN_vkGetDeviceProcAddr gdpa = link->u.pLayerInfo->pfnNextGetDeviceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;
    InstanceData *inst = find_instance(dispatch_key(pd));
    PFN_vkCreateDevice create =
        (PFN_vkCreateDevice)gipa(inst ? inst->instance : VK_NULL_HANDLE, "vkCreateDevice");
    if (create == NULL) return VK_ERROR_INITIALIZATION_FAILED;

    /* strip the unsupported feature from the request (in place; restored below) */
    VkBool32 *cleared[8];
    int n_cleared = 0;
    if (!driver_supports_partially_bound(inst, pd)) {
        for (VkBaseOutStructure *s = (VkBaseOutStructure *)info->pNext; s != NULL && n_cleared < 8; s = s->pNext) {
            VkBool32 *flag = NULL;
            if (s->sType == VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DESCRIPTOR_INDEXING_FEATURES)
                flag = &((VkPhysicalDeviceDescriptorIndexingFeatures *)s)->descriptorBindingPartiallyBound;
            else if (s->sType == VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES)
                flag = &((VkPhysicalDeviceVulkan12Features *)s)->descriptorBindingPartiallyBound;
            if (flag != NULL && *flag) {
                *flag = VK_FALSE;
                cleared[n_cleared++] = flag;
            }
        }
    }
    VkResult r = create(pd, info, alloc, out);
    for (int i = 0; i < n_cleared; i++) *cleared[i] = VK_TRUE;
    if (r != VK_SUCCESS) return r;

    DeviceData d;
    d.key = dispatch_key(*out);
    d.next_gdpa = gdpa;
    d.next_destroy_device = (PFN_vkDestroyDevice)gdpa(*out, "vkDestroyDevice");
    pthread_mutex_lock(&g_lock);
    int slot = -1;
    for (int i = 0; i < MAX_OBJECTS && slot < 0; i++)
        if (g_devices[i].key == NULL) slot = i;
    if (slot >= 0) g_devices[slot] = d;
    pthread_mutex_unlock(&g_lock);
    return slot >= 0 ? VK_SUCCESS : VK_ERROR_OUT_OF_HOST_MEMORY;
}

static VKAPI_ATTR void VKAPI_CALL layer_DestroyDevice(VkDevice device, const VkAllocationCallbacks *alloc) {
    void *key = dispatch_key(device);
    PFN_vkDestroyDevice next = NULL;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < MAX_OBJECTS; i++)
        if (g_devices[i].key != NULL && g_devices[i].key == key) {
            next = g_devices[i].next_destroy_device;
            memset(&g_devices[i], 0, sizeof(DeviceData));
            break;
        }
    pthread_mutex_unlock(&g_lock);
    if (next) next(device, alloc);
}

/* ------------------------------------------------------------------------------------------------ dispatch */

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL rlft_layer_GetDeviceProcAddr(VkDevice device, const char *name);

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL rlft_layer_GetInstanceProcAddr(VkInstance instance,
                                                                               const char *name) {
    if (!strcmp(name, "vkGetInstanceProcAddr")) return (PFN_vkVoidFunction)rlft_layer_GetInstanceProcAddr;
    if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)rlft_layer_GetDeviceProcAddr;
    if (!strcmp(name, "vkCreateInstance")) return (PFN_vkVoidFunction)layer_CreateInstance;
    if (!strcmp(name, "vkDestroyInstance")) return (PFN_vkVoidFunction)layer_DestroyInstance;
    if (!strcmp(name, "vkCreateDevice")) return (PFN_vkVoidFunction)layer_CreateDevice;
    if (!strcmp(name, "vkDestroyDevice")) return (PFN_vkVoidFunction)layer_DestroyDevice;
    if (!strcmp(name, "vkGetPhysicalDeviceFeatures2")) return (PFN_vkVoidFunction)layer_GetPhysicalDeviceFeatures2;
    if (!strcmp(name, "vkGetPhysicalDeviceFeatures2KHR"))
        return (PFN_vkVoidFunction)layer_GetPhysicalDeviceFeatures2KHR;
    if (instance == VK_NULL_HANDLE) return NULL;
    InstanceData *inst = find_instance(dispatch_key(instance));
    return inst ? inst->next_gipa(instance, name) : NULL;
}

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL rlft_layer_GetDeviceProcAddr(VkDevice device, const char *name) {
    if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)rlft_layer_GetDeviceProcAddr;
    if (!strcmp(name, "vkDestroyDevice")) return (PFN_vkVoidFunction)layer_DestroyDevice;
    DeviceData *d = find_device(dispatch_key(device));
    return d ? d->next_gdpa(device, name) : NULL;
}

EXPORT VKAPI_ATTR VkResult VKAPI_CALL vkNegotiateLoaderLayerInterfaceVersion(VkNegotiateLayerInterface *v) {
    if (v == NULL || v->sType != LAYER_NEGOTIATE_INTERFACE_STRUCT) return VK_ERROR_INITIALIZATION_FAILED;
    if (v->loaderLayerInterfaceVersion > 2) v->loaderLayerInterfaceVersion = 2;
    v->pfnGetInstanceProcAddr = rlft_layer_GetInstanceProcAddr;
    v->pfnGetDeviceProcAddr = rlft_layer_GetDeviceProcAddr;
    v->pfnGetPhysicalDeviceProcAddr = NULL;
    return VK_SUCCESS;
}
