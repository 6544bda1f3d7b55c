# The release's NIH ChestX-ray14 experiment (README, "The scripts, in order"). Every step reads this
# file and takes the constants it knows, so each is changed here once:
#     python example_selection.py config/nih_densenet121.py --layer fc
#     python concept_matching.py config/nih_densenet121.py --layer fc
# Anything here can still be overridden per run with --name value.

# probing set and target (step 2; steps 4-6 read them too)
dataset = "nih14"
split = "train"                        # the release probes the train split
data_root = "data/nih14/images"
model = "densenet121"                  # medical_mae's DenseNet-121, MoCo v2 on 0.3M X-rays, fine-tuned on NIH
checkpoint = "pretrained/densenet121.pth"
resize = 256
crop = 224
# the method (steps 2 and 3)
selection = "adaptive"
adaptive_percent = 93.0
alpha = 95.0
template_ver = "base"
adaptive = True
# VLM and concepts (step 3)
model_clip = "medclip"
clip_weights = "pretrained/medclip-vit"
concept_set = "mimic_nouns"
# boxes (steps 5 and 6)
box_source = "nih"
save_root = "results"
