"""ComfyUI nodes of the pack (HyCa Calibrate, HyCa Solver Map Loader, HyCa Apply).

They translate between ComfyUI and ``hyca_core``; the node classes land with the ComfyUI
integration (issue 3). Until then the pack registers no nodes.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
