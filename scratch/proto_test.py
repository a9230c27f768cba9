import numpy as np, jax, jax.numpy as jnp, time
exec("import numpy as np\nimport jax\nimport jax.numpy as jnp\n"+open('scratch/fast_samplers.py').read())
class S: pass
sch=S()
betas=np.linspace(1e-4,0.09,1000); sch.gammas=np.cumprod(1-betas)
mu_s=0.3
def denoise(x,gamma,si):
    mu=x[...,:1]; y=x[...,1:]; a=jnp.sqrt(gamma)[:,None,None,None]; b=jnp.sqrt(1-gamma)[:,None,None,None]
    return b*(y-a*mu)/(a*a*mu_s**2+b*b)
cond=jax.random.uniform(jax.random.key(1),(2,32,32,1),minval=-0.5,maxval=0.5)
key=jax.random.key(0)
def target(g):
    yT=jax.random.normal(jax.random.split(key)[0],(2,32,32,1))
    a,b=np.sqrt(g[0]),np.sqrt(1-g[0]); z=(yT-a*cond)/np.sqrt(a*a*mu_s**2+b*b)
    aL,bL=np.sqrt(g[-1]),np.sqrt(1-g[-1]); return cond+aL*mu_s**2*z/np.sqrt(aL**2*mu_s**2+bL**2)
for n in [10,20,50,200]:
    for sp in [respaced_gammas, logsnr_gammas]:
        g=sp(sch,n)
        t=target(g)
        e1=float(jnp.abs(ddim_sample(denoise,cond,key,g,clip_x0=False)-t).max())
        e2=float(jnp.abs(dpm_solver_sample(denoise,cond,key,g,clip_x0=False)-t).max())
        print(n,sp.__name__,e1,e2)
