"""``python -m rlft.envs.vk_layer``: build the Vulkan layer (see ``rlft.envs.vk_layer``) and print its directory."""

from rlft.envs.vk_layer import build_layer

if __name__ == "__main__":
    print(build_layer())
