/* LD_PRELOAD helper of bench/session_memory.py: which heap blocks a session keeps.

   Wraps malloc/calloc/realloc/free (glibc's __libc_* underneath). While armed with a
   non-zero tag, every block of at least `min` bytes is remembered with the tag (the
   phase that made it: object creation, handshake, first read); freeing a block forgets
   it whatever the phase. mt_dump writes "tag size caller..." per block still live (return addresses). Single-threaded
   use only (the bench's child process). Built by the bench with gcc when present. */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/mman.h>
#include <execinfo.h>
extern void *__libc_malloc(size_t); extern void __libc_free(void*);
extern void *__libc_calloc(size_t,size_t); extern void *__libc_realloc(void*,size_t);
#define FRAMES 8
typedef struct {void *p; size_t n; int tag; void *at[FRAMES];} E;
static int inside;
#define CAP (1u<<22)
static E *tab; static int tag; static size_t minsz = 64; static long live;
static size_t h(void *p){ return (((uintptr_t)p) >> 4) * 2654435761u & (CAP-1); }
static void ins(void *p, size_t n){
    if(!tab||!tag||!p||n<minsz||inside) return;
    size_t i=h(p); while(tab[i].p && tab[i].p!=(void*)1) i=(i+1)&(CAP-1);
    tab[i].p=p; tab[i].n=n; tab[i].tag=tag; live++;
    void *bt[FRAMES+2]; inside=1; int k=backtrace(bt, FRAMES+2); inside=0;
    for(int j=0;j<FRAMES;j++) tab[i].at[j] = j+2<k ? bt[j+2] : 0;  /* skip ins, malloc */
}
static void rem(void *p){ if(!tab||!p||!live) return; size_t i=h(p); while(tab[i].p){ if(tab[i].p==p){ tab[i].p=(void*)1; live--; return;} i=(i+1)&(CAP-1);} }
void *malloc(size_t n){ void *p=__libc_malloc(n); ins(p,n); return p; }
void *calloc(size_t a,size_t b){ void *p=__libc_calloc(a,b); ins(p,a*b); return p; }
void *realloc(void *o,size_t n){ rem(o); void *p=__libc_realloc(o,n); ins(p,n); return p; }
void free(void *p){ rem(p); __libc_free(p); }
void mt_arm(int t, size_t min){ if(!tab){ void *w[2]; inside=1; backtrace(w,2); inside=0; } if(!tab) tab=mmap(0,sizeof(E)*CAP,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); tag=t; minsz=min; }
void mt_dump(const char *path){ FILE *f=fopen(path,"w"); int save=tag; tag=0; for(size_t i=0;i<CAP;i++) if(tab[i].p && tab[i].p!=(void*)1) { fprintf(f,"%d %zu",tab[i].tag,tab[i].n); for(int j=0;j<FRAMES;j++) fprintf(f," %p",tab[i].at[j]); fprintf(f,"\n"); } fclose(f); tag=save; }
