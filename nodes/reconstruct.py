"""PLIC Diffusers Loader and PLIC Reconstruct: the reference decoder (diffusers' ControlNet inpaint
pipeline with the inpaint and color+canny ControlNets) inside ComfyUI."""

from __future__ import annotations

from plic import model_files
from plic.codec import pack
from plic.decode import families, lora
from plic.decode import reconstruct as core

from . import memory
from .common import (
    CATEGORY,
    PAYLOAD,
    PIPELINE,
    check_one_size,
    comfy_device,
    comfy_module,
    model_dirs,
    rgb_list_to_image,
)

#: PLIC Diffusers Loader's LoRA inputs: lora_1, lora_1_strength, lora_2, lora_2_strength.
LORA_SLOTS = (1, 2)


class PlicDiffusersLoader:
    DESCRIPTION = ("Loads an SD1.5 diffusers folder from models/diffusers and the inpaint and "
                   "color+canny ControlNets from models/controlnet, offline, for PLIC Reconstruct, "
                   "with up to two LoRAs from models/loras merged in (e.g. a few-step LCM, TCD or "
                   "Hyper-SD LoRA: then pick its sampler on PLIC Reconstruct). The loaded pipeline "
                   "is cached until other models are chosen.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The loaded decoder, for PLIC Reconstruct.",)

    @classmethod
    def INPUT_TYPES(cls):
        controlnets = model_files.list_models(model_dirs("controlnet"), "controlnet")
        loras = ["none", *model_files.list_models(model_dirs("loras"), "loras")]
        lora_inputs = {}
        for slot in LORA_SLOTS:
            lora_inputs[f"lora_{slot}"] = (loras, {
                "default": "none", "tooltip": "A LoRA from models/loras (kohya/A1111 or diffusers "
                "layout) merged into the UNet and text encoder; none: no LoRA."})
            lora_inputs[f"lora_{slot}_strength"] = ("FLOAT", {
                "default": lora.DEFAULT_WEIGHT, "min": -10.0, "max": 10.0, "step": 0.05,
                "tooltip": "The LoRA's weight (1: as trained)."})
        folders = model_files.list_models(model_dirs("diffusers"), "diffusers")
        return {"required": {
            "model": (folders + model_files.list_models(model_dirs("checkpoints"), "checkpoints"), {
                "tooltip": "An SD1.5-family diffusers folder in models/diffusers (model_index.json, "
                           "unet/, vae/, text_encoder/, tokenizer/, scheduler/), or a fine-tune's "
                           "single .safetensors checkpoint in models/checkpoints (then set base_model)."}),
            **{control.input_name: (controlnets, {
                "tooltip": f"{control.expects}: a diffusers folder or a single file in models/controlnet."})
               for control in families.control_roles()},
            "precision": (list(core.PRECISIONS), {
                "default": "auto",
                "tooltip": "auto: fp16 on a GPU, fp32 on the CPU. Half precision is never used "
                           "on the CPU."}),
            "cpu_offload": ("BOOLEAN", {
                "default": False,
                "tooltip": "Keep each model on the CPU until it is needed (less GPU memory, slower)."}),
        }, "optional": {  # the fast paths: optional, so workflows saved before them still queue
            "channels_last": ("BOOLEAN", {
                "default": False,
                "tooltip": "channels_last memory format for UNet, ControlNets and VAE. Changes the "
                           "image by rounding only."}),
            "compile": (list(core.COMPILE_MODES), {
                "default": "off",
                "tooltip": "torch.compile the UNet and ControlNets: faster steps after the first image "
                           "of each size, which waits for the compilation. reduce-overhead adds CUDA "
                           "graphs; max-autotune tunes for many minutes. Changes the image by rounding "
                           "only; not with cpu_offload."}),
            "family": (list(families.FAMILIES), {
                "default": families.DEFAULT.name,
                "tooltip": "The decoder family: its pipeline, ControlNets and default sampler, steps "
                           "and guidance (sd15: " + families.DEFAULT.title + ")."}),
            **lora_inputs,
            "base_model": (["none", *folders], {
                "default": "none",
                "tooltip": "For a single-file model: a diffusers folder of its family (e.g. "
                           "stable-diffusion-v1-5) whose configs, tokenizer and scheduler it is read "
                           "with (its weights are not used)."}),
        }}

    def load(self, model, precision, cpu_offload, channels_last=False, compile="off",
             family=families.DEFAULT.name, base_model="none", **inputs):
        """``inputs``: the family's ``<role>_controlnet`` names and the ``lora_N`` /
        ``lora_N_strength`` pairs."""
        chosen = families.get(family)
        net_dirs = model_dirs("controlnet")
        lora_dirs = model_dirs("loras")
        pipeline, base = model_files.find_decoder_model(
            model, None if base_model == "none" else base_model, model_dirs("diffusers"),
            model_dirs("checkpoints"), chosen.pipeline_files)
        paths = core.ModelPaths(
            pipeline=pipeline, base=base,
            controlnets=tuple(model_files.find_controlnet(inputs.get(control.input_name, ""), net_dirs,
                                                     control.title) for control in chosen.controls),
            family=chosen.name,
            loras=tuple(lora.LoraSpec(model_files.find_lora(inputs[f"lora_{slot}"], lora_dirs),
                                      float(inputs.get(f"lora_{slot}_strength", lora.DEFAULT_WEIGHT)))
                        for slot in LORA_SLOTS if inputs.get(f"lora_{slot}", "none") != "none"))
        options = core.LoadOptions(device=comfy_device(), precision=precision,
                                   cpu_offload=bool(cpu_offload), channels_last=bool(channels_last),
                                   compile=compile)
        memory.make_room(memory.weight_bytes(paths.files()), options.device)
        reconstructor = core.Reconstructor(paths, options)
        _load_managed(reconstructor)  # load now so that missing files are reported by this node
        return (reconstructor,)


def _load_managed(reconstructor: core.Reconstructor) -> None:
    """Load the reconstructor's pipeline, registered with ComfyUI's memory manager and on its
    device with room to run (ComfyUI offloads only what it must); with cpu_offload, only room
    for the largest model at a time, which diffusers moves in and out itself."""
    pipe = reconstructor.pipeline
    device = str(reconstructor.options.device)
    if reconstructor.options.cpu_offload:
        pipeline = reconstructor.paths.pipeline
        memory.make_room(memory.weight_bytes([pipeline / "unet" if pipeline.is_dir() else pipeline]), device)
    else:
        memory.use(pipe, lambda: memory.pipeline_modules(pipe), device, core.release)


class _Progress:
    """ComfyUI's progress bar over all steps of a batch, and its cancel button."""

    def __init__(self, total: int):
        utils = comfy_module("comfy.utils")
        self.management = comfy_module("comfy.model_management")
        self.bar = utils.ProgressBar(total) if utils is not None else None

    def step(self, done: int, total: int) -> None:
        if self.management is not None:
            self.management.throw_exception_if_processing_interrupted()
        if self.bar is not None:
            self.bar.update(1)


class PlicReconstruct:
    DESCRIPTION = ("Reconstructs images from PLIC payloads as the paper did: SD1.5 with the inpaint "
                   "and color+canny ControlNets and UniPC, then puts the stored salient pixels back "
                   "exactly. Steps and seed come from each file unless set here.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The reconstructed images at the working size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": (PIPELINE, {"tooltip": "The decoder from PLIC Diffusers Loader."}),
            "plic": (PAYLOAD, {"tooltip": "Payloads from PLIC Load (or PLIC Pack); all of one size."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                              "tooltip": "Denoising steps; 0 takes the file's (default "
                                         f"{pack.DEFAULT_DECODE_SETTINGS['steps']})."}),
            "seed": ("INT", {"default": -1, "min": -1, "max": 2**63 - 1,
                             "tooltip": "Random seed; -1 takes the file's (default "
                                        f"{pack.DEFAULT_DECODE_SETTINGS['seed']})."}),
            "guidance_scale": ("FLOAT", {"default": core.DEFAULT_GUIDANCE, "min": 0.0, "max": 30.0,
                                         "step": 0.1,
                                         "tooltip": "Classifier-free guidance (default "
                                                    f"{core.DEFAULT_GUIDANCE:g})."}),
            "keep_loaded": ("BOOLEAN", {"default": True,
                                        "tooltip": "Keep the pipeline in memory for the next run (fast). "
                                                   "Off: give its memory back to ComfyUI after this run."}),
        }, "optional": {  # the fast paths: optional, so workflows saved before them still queue
            "scheduler": (["file", *core.SCHEDULERS], {
                "default": "file",
                "tooltip": f"Sampler; file takes the file's (default {pack.DEFAULT_DECODE_SETTINGS['scheduler']}). "
                           "Another sampler, like fewer steps, changes the image (e.g. dpmpp_2m or unipc "
                           "at 20 steps). "
                           "lcm (LCM-LoRA) and tcd (TCD, Hyper-SD LoRAs) are for a few-step LoRA "
                           "on the loader: 4-8 steps (0 takes 4) with guidance_scale 1."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Payloads decoded per pipeline call (each keeps its seed): "
                                              "faster per image, more memory. Rounding changes only."}),
            "vae_tiling": ("BOOLEAN", {"default": False,
                                       "tooltip": "Run the VAE in tiles: less memory for large images; "
                                                  "changes images larger than the VAE tile (512 px for SD1.5)."}),
        }}

    def run(self, pipeline, plic, steps, seed, guidance_scale, keep_loaded=True, scheduler="file",
            batch_size=1, vae_tiling=False):
        parts = [pack.unpack(item) for item in plic]
        check_one_size(parts, "PLIC Reconstruct", "decode")
        settings = core.DecodeSettings(steps=steps or None, seed=None if seed < 0 else seed,
                                       guidance_scale=guidance_scale,
                                       scheduler=None if scheduler == "file" else scheduler,
                                       vae_tiling=bool(vae_tiling))
        _load_managed(pipeline)
        groups = core.batches(parts, settings, batch_size, pipeline.family)
        progress = _Progress(sum(settings.resolve(g[0].decode_settings, pipeline.family).steps for g in groups))
        images = [image for g in groups for image in pipeline.reconstruct_batch(g, settings, progress.step)]
        if not keep_loaded:
            core.release()  # the loader's output stays valid: the next run loads again
        return (rgb_list_to_image(images),)


NODE_CLASS_MAPPINGS = {"PlicDiffusersLoader": PlicDiffusersLoader, "PlicReconstruct": PlicReconstruct}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PlicDiffusersLoader": "PLIC Diffusers Loader",
    "PlicReconstruct": "PLIC Reconstruct",
}
