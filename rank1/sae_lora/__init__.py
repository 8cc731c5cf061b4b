"""Stage 5 (``5_sae_latent_lora/``): a low-rank finetune in the latent space of a residual-stream SAE.

``config`` holds the scripts' config, ``stage`` one ``run_<script>`` per script; ``behavior`` makes the
behaviour dataset, ``resid_sae`` the residual store and its SAE, ``adapter`` is the SAE-LoRA, ``train`` its
resumable training, ``eval`` the measures of 5.4, ``plots`` its figures. No later stage imports it.
"""
