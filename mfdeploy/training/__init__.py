"""Fine-tuning on labelled images: the options (:mod:`.options`) and the loop behind `mfdeploy train` (:mod:`.loop`)."""
