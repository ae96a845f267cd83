"""The planar and radial maps along their one direction: derivations/12-planar-and-radial.md.

    python derivations/figures/planar_radial.py   # writes planar_f.png and radial_rho.png here

planar_f.png: f(a) = a + psi tanh(a) for psi < -1 (not one-to-one), psi = -1 (flat at 0) and
psi > -1 (strictly increasing). radial_rho.png: rho(r) = r (1 + beta / (alpha + r)) for alpha = 1
and beta >= -alpha (increasing) or beta < -alpha (excluded by the parametrisation).
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def planar(path):
    a = np.linspace(-3, 3, 401)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for psi, style in ((-2.0, "r-"), (-1.0, "k--"), (0.5, "b-")):
        label = {-2.0: r"$\psi = -2$ (< -1): not one-to-one", -1.0: r"$\psi = -1$: $f'(0) = 0$",
                 0.5: r"$\psi = 0.5$ (> -1): increasing"}[psi]
        ax.plot(a, a + psi * np.tanh(a), style, label=label)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set(title=r"Planar layer along $w$: $f(a) = a + \psi\tanh a$", xlabel="$a = w^T z + b$",
           ylabel="$f(a) = w^T x + b$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def radial(path):
    r = np.linspace(0, 4, 401)
    alpha = 1.0
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for beta, style in ((-1.5, "r:"), (-1.0, "k--"), (-0.5, "m-"), (0.0, "0.5"), (2.0, "b-")):
        note = " (excluded: beta < -alpha)" if beta < -alpha else ""
        ax.plot(r, r * (1 + beta / (alpha + r)), style, label=rf"$\beta = {beta:g}${note}")
    ax.set(title=r"Radial layer along a ray, $\alpha = 1$: $\rho(r) = r\,(1 + \beta/(\alpha + r))$",
           xlabel=r"$r = \|z - z_0\|$", ylabel=r"$\rho = \|x - z_0\|$")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    planar(os.path.join(HERE, "planar_f.png"))
    radial(os.path.join(HERE, "radial_rho.png"))
