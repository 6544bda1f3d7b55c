# The demo world (README, "The demo world"): the committed demo target and VLM on a phantom world.
# `python demo.py` writes the world and the concept set, then runs every step with this file; any
# step can be re-run by hand the same way:
#     python example_selection.py config/demo.py --layer penultimate

dataset = "phantom"
split = "train"
data_root = "demo/world/images"        # demo.py writes the world into this folder's parent
checkpoint = "pretrained/phantom_densenet121.pth"
resize = 96                            # the demo target was trained at 96 px
crop = 96
model_clip = "phantom"
clip_weights = "pretrained/phantom_clip"
concept_set = "results/demo/concept_set/demo_concepts.txt"  # demo.py builds it (phantom nouns + MIMIC nouns)
metric_encoders = "all-minilm-l6-v2"   # the offline encoder for the fc cosine (the others download ~1 GB)
box_file = "demo/world/bbox.csv"
save_root = "results/demo"
truth = "lift"                         # compare_describers.py: a phantom neuron is the finding its top images
                                       # over-represent (labels are exact here)
