import sys; sys.path.insert(0,'tests')
import conftest
from test_predict_tiling import *
restorer = inference.Restorer(noise_apply, {}, ddim, batch_per_device=4)
pred = inference.predict_image(restorer, np.zeros((56,56),np.float32), jax.random.key(1), num_samples=8, tile=32, overlap=8, keep_samples=True)
for std in [pred.std, pred.samples.std(0, ddof=1)]:
    col=std.mean(0); inside=np.concatenate([col[:20],col[36:]])
    print(col[24:32].mean(), inside.mean(), 4*inside.std()/np.sqrt(8)+0.02)
