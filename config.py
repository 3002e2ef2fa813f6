"""The one configuration tree.

Every setting has a default here. A run's config is built in this order: these defaults, the yaml's
``BASE`` chain, the ``--cfg`` yaml, ``--opts KEY VALUE ...``, then the command-line flags. An unknown
key at any step is an error that names it.
"""
import os

import yaml
from yacs.config import CfgNode as CN

_C = CN()
_C.BASE = ['']  # yaml files merged before this one, relative to it

# -----------------------------------------------------------------------------
# Data
# -----------------------------------------------------------------------------
_C.DATA = CN()
_C.DATA.BATCH_SIZE = 128  # per device
_C.DATA.DATA_PATH = ''
_C.DATA.FORMAT = 'auto'  # auto (list files if present, else folders) | folder | list
_C.DATA.IMG_SIZE = 224
_C.DATA.INTERPOLATION = 'bicubic'  # random | bilinear | bicubic
_C.DATA.MEAN = [0.485, 0.456, 0.406]  # ImageNet statistics
_C.DATA.STD = [0.229, 0.224, 0.225]
_C.DATA.PIN_MEMORY = True  # only takes effect on CUDA
_C.DATA.NUM_WORKERS = 8  # capped at the CPU count
_C.DATA.CHECK_FILES = True  # check at start that every listed image exists
_C.DATA.MAX_BAD_IMAGES = 50  # unreadable images tolerated per epoch before the run stops

# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.TYPE = 'swin'  # swin | acmix_swin (or the ACmix reference's swin_acmix) | amixer_swin | amixer_deit
_C.MODEL.NAME = 'swin_tiny_patch4_window7_224'
_C.MODEL.PRETRAINED = ''  # weights to start from (a checkpoint with 'model', or a bare state dict)
_C.MODEL.RESUME = ''  # checkpoint to resume training from
_C.MODEL.NUM_CLASSES = 0  # 0: taken from the data (1000 where there is no data)
_C.MODEL.DROP_RATE = 0.0
_C.MODEL.DROP_PATH_RATE = 0.1
_C.MODEL.LABEL_SMOOTHING = 0.1

# Swin backbone, shared by swin, acmix_swin and amixer_swin
_C.MODEL.SWIN = CN()
_C.MODEL.SWIN.PATCH_SIZE = 4
_C.MODEL.SWIN.IN_CHANS = 3
_C.MODEL.SWIN.EMBED_DIM = 96
_C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
_C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
_C.MODEL.SWIN.WINDOW_SIZE = 7
_C.MODEL.SWIN.STAGE_WINDOW_SIZES = []  # one window size per stage, overriding WINDOW_SIZE (AMixer)
_C.MODEL.SWIN.MLP_RATIO = 4.0
_C.MODEL.SWIN.QKV_BIAS = True
_C.MODEL.SWIN.QK_SCALE = None
_C.MODEL.SWIN.APE = False
_C.MODEL.SWIN.PATCH_NORM = True

# AMixer token mixer, shared by amixer_swin and amixer_deit
_C.MODEL.AMIXER = CN()
_C.MODEL.AMIXER.K = 1.5  # amixer_swin: int(heads * K) weight banks per block (amixer_deit: DEIT.NUM_BANKS)
_C.MODEL.AMIXER.POLICY_APE = False  # amixer_swin: per-stage position embedding added to the adapter's input
_C.MODEL.AMIXER.INIT_VALUES = 1e-3  # layer-scale init
_C.MODEL.AMIXER.ADAPTER_REDUCTION = 4  # hidden width of the adapter is dim / this

# Isotropic (DeiT-style) backbone of amixer_deit
_C.MODEL.DEIT = CN()
_C.MODEL.DEIT.PATCH_SIZE = 16
_C.MODEL.DEIT.IN_CHANS = 3
_C.MODEL.DEIT.EMBED_DIM = 384
_C.MODEL.DEIT.DEPTH = 17
_C.MODEL.DEIT.NUM_HEADS = 8
_C.MODEL.DEIT.MLP_RATIO = 3.0
_C.MODEL.DEIT.NUM_BANKS = 16  # AMixer weight banks per block, shared by the heads (the reference's k)

# -----------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------
_C.TRAIN = CN()
_C.TRAIN.START_EPOCH = 0
_C.TRAIN.EPOCHS = 300
_C.TRAIN.WARMUP_EPOCHS = 20
_C.TRAIN.WEIGHT_DECAY = 0.05
# Learning rates are given for a global batch of LR_SCALE_BATCH and scaled linearly to the actual
# global batch (per-device batch x world size x accumulation steps), as Swin does. 0: no scaling.
_C.TRAIN.BASE_LR = 5e-4
_C.TRAIN.WARMUP_LR = 5e-7
_C.TRAIN.MIN_LR = 5e-6
_C.TRAIN.LR_SCALE_BATCH = 512
_C.TRAIN.SCALE_MIN_LR = True  # False: MIN_LR is absolute, whatever the batch (AMixer's --min_lr)
_C.TRAIN.CLIP_GRAD = 5.0  # 0: no clipping
_C.TRAIN.AUTO_RESUME = True
_C.TRAIN.ACCUMULATION_STEPS = 1
_C.TRAIN.USE_CHECKPOINT = False  # gradient checkpointing
_C.TRAIN.COMPILE = False  # torch.compile the model
_C.TRAIN.SAVE_KEEP = 3  # newest checkpoints kept (best.pth is kept besides)
_C.TRAIN.SAVE_INTERVAL_STEPS = 0  # mid-epoch checkpoint every N optimizer steps; 0: off
_C.TRAIN.MAX_NONFINITE_STEPS = 10  # consecutive skipped non-finite steps before the run stops

_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = 'cosine'  # cosine | linear | step
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30  # step
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1  # step
# True: the decay spans the steps after the warm-up (Swin's key, its default since 2022); False: it spans
# the whole run and the warm-up overrides its start (ACmix, and the released Swin weights)
_C.TRAIN.LR_SCHEDULER.WARMUP_PREFIX = True
_C.TRAIN.LR_SCHEDULER.WARMUP_INCLUSIVE = False  # True: the last warm-up step is at BASE_LR (np.linspace, AMixer)

_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = 'adamw'  # adamw | sgd
_C.TRAIN.OPTIMIZER.EPS = 1e-8
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9

_C.TRAIN.EMA = CN()
_C.TRAIN.EMA.ENABLE = False
_C.TRAIN.EMA.DECAY = 0.9999
_C.TRAIN.EMA.EVAL = True  # also evaluate the EMA weights each epoch

# -----------------------------------------------------------------------------
# Augmentation (timm)
# -----------------------------------------------------------------------------
_C.AUG = CN()
_C.AUG.COLOR_JITTER = 0.4
_C.AUG.HFLIP = 0.5  # horizontal flip probability (0 for data where flips change the class, e.g. digits)
_C.AUG.AUTO_AUGMENT = 'rand-m9-mstd0.5-inc1'  # 'none' to disable
_C.AUG.REPROB = 0.25  # random erasing
_C.AUG.REMODE = 'pixel'
_C.AUG.RECOUNT = 1
_C.AUG.MIXUP = 0.8  # alpha; 0 disables
_C.AUG.CUTMIX = 1.0  # alpha; 0 disables
_C.AUG.CUTMIX_MINMAX = None
_C.AUG.MIXUP_PROB = 1.0
_C.AUG.MIXUP_SWITCH_PROB = 0.5
_C.AUG.MIXUP_MODE = 'batch'

# -----------------------------------------------------------------------------
# Evaluation
# -----------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.CROP = True  # resize to IMG_SIZE / CROP_PCT, then center crop; else resize to IMG_SIZE
_C.TEST.CROP_PCT = 0.875

# -----------------------------------------------------------------------------
# Mixed precision: used on CUDA only
# -----------------------------------------------------------------------------
_C.AMP = CN()
_C.AMP.ENABLE = True
_C.AMP.DTYPE = 'bfloat16'  # bfloat16 | float16 (float16 uses a GradScaler)

# -----------------------------------------------------------------------------
# Misc
# -----------------------------------------------------------------------------
_C.OUTPUT = 'output'  # checkpoints and logs go to OUTPUT/MODEL.NAME/TAG
_C.TAG = 'default'
_C.SAVE_FREQ = 1  # epochs
_C.PRINT_FREQ = 10  # optimizer steps
_C.SEED = 0
_C.DEVICE = 'auto'  # auto | cpu | cuda
_C.EVAL_MODE = False
_C.THROUGHPUT_MODE = False

# Testing hooks: never set these in a real run.
_C.DEBUG = CN()
_C.DEBUG.NAN_LOSS_STEPS = []  # global optimizer steps whose loss is replaced by NaN


def get_default_config():
    return _C.clone()


def merge_yaml(config, cfg_file):
    """Merge `cfg_file` into `config`, after the files its BASE list names (paths relative to it)."""
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f'config file not found: {cfg_file}')
    with open(cfg_file) as f:
        yaml_cfg = yaml.safe_load(f) or {}
    for base in yaml_cfg.get('BASE', ['']):
        if base:
            merge_yaml(config, os.path.join(os.path.dirname(cfg_file), base))
    config.defrost()
    config.merge_from_file(cfg_file)
    config.BASE = ['']  # merged already: a dump of the config (config.yaml of a run) stands on its own
    config.freeze()
