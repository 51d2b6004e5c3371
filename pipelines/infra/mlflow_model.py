"""MLflow "model from code" for an ADM network: safetensors weights + the resolved config JSON, no pickles.

predict() takes {"x_t": float32 [B, C, H, W], "t": int64 [B], optional "y": int64 [B]} and returns the network's
output as a NumPy array (UNet: eps and variance values; classifiers: logits). An upsampler also takes "low_res"
(float32 [B, C, h, w] in [-1, 1]) and, trained with conditioning augmentation, "low_res_sigma" (float32 [B]).
"""

import json

import mlflow
import numpy as np
import torch


class AdmNetwork(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        # MLflow runs this file as a script when it logs the model; the network code is needed once it loads one
        from components.checkpoint import load_into  # noqa: PLC0415
        from components.config import ClassifierConfig, UNetConfig, UpsamplerConfig  # noqa: PLC0415
        from components.networks import build_classifier, build_unet  # noqa: PLC0415

        with open(context.artifacts["config"]) as f:
            config = json.load(f)
        kind, values = config["kind"], config["network"]
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        unets = {"diffusion": UNetConfig, "upsampler": UpsamplerConfig}
        net = (build_unet(unets[kind](**values), null_class=config.get("null_class", False),
                          noise_level=config.get("noise_level", False)) if kind in unets
               else build_classifier(ClassifierConfig(**values)))
        self.kind = kind
        self.net = load_into(net, context.artifacts["weights"]).eval()

    def predict(self, context, model_input, params=None):
        x = torch.as_tensor(np.asarray(model_input["x_t"], dtype=np.float32))
        t = torch.as_tensor(np.asarray(model_input["t"], dtype=np.int64))
        with torch.inference_mode():
            y = model_input.get("y")
            y = None if y is None else torch.as_tensor(np.asarray(y, dtype=np.int64))
            if self.kind == "upsampler":
                sigma = model_input.get("low_res_sigma")
                extra = {} if sigma is None else {"low_res_sigma": torch.as_tensor(np.asarray(sigma, np.float32))}
                low_res = torch.as_tensor(np.asarray(model_input["low_res"], dtype=np.float32))
                out = self.net(x, t, low_res=low_res, y=y, **extra)
            elif self.kind == "diffusion":
                out = self.net(x, t, y)
            else:
                out = self.net(x, t)
        return out.numpy()


mlflow.models.set_model(AdmNetwork())
